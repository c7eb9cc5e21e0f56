"""Golden bytes: the synthetic cohort's generative model is fixed.

The digests below were recorded with the single-module generator (``COHORT_VERSION`` 1.0.0)
before it became a subpackage and before the vitals were added. Every file that generator
wrote (arrays, task and latent CSVs, ``labs_means.json``; not ``cohort.json``, which holds a
timestamp) must keep its exact bytes, so neither a refactor nor a new modality may move an
existing random stream, equation or constant. Files added later (``vitals_*``) are excluded
from the digest.

A failure means the generator changed: if the change is intended, bump ``COHORT_VERSION`` and
record new digests (and say so in the changelog); the per-file SHA-256 of the new output are
printed in the failure message. The digests assume numpy's float kernels of this machine kind
(SIMD-dispatched ``exp``/``sin`` may differ in the last bit on other CPUs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pacx.data.synthetic import make_cohort, make_cxr_corpus

# (combined digest of every 1.0.0 file, cohort.json "content_hash" of 1.0.0)
GOLDEN = {
    "cohort_seed0": ("508ef184ad0618a436334b8c54d9006ea5c8817bb304e02e6f6648b580ef3b52",
                     "0674b967251a299f5f3e0eb17e662a028cdfe8fe453fdd4e01e0efff90861dca"),
    "cohort_seed1": ("1b751e757361d6d2b98d862801f3131f9db628d407df7bdc0afe75d1b24d7cf1",
                     "0248c183699b6294d3acb7f07276866306f893da7332e480f08d878b676340d4"),
    "corpus_probe": ("27c4f05eb21bf0ad3d10a4007ef9c6104e15eecf13deb3eddcfc113d500b868e",
                     "4cf0512e066e68de4e7584843e4686ab449073afafd3c4bb9f0eb948ada8c5f0"),
}
# (files per generation in 1.0.0)
FILE_COUNTS = {"cohort_seed0": 49, "cohort_seed1": 49, "corpus_probe": 10}


def _is_v1_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name != "cohort.json" and not name.startswith("vitals")


def _file_digests(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and _is_v1_file(rel):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _combined(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(digests.items())).encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_v1_file_keeps_its_bytes(tmp_path: Path, name: str) -> None:
    if name == "corpus_probe":
        root = make_cxr_corpus(tmp_path, {"probe_train": 300, "probe_val": 100}, 32, 0, num_workers=1)
    else:
        root = make_cohort(tmp_path, n_patients=300, image_size=32, seed=int(name[-1]), num_workers=1)
    digests = _file_digests(root)
    combined, v1_content = GOLDEN[name]
    assert len(digests) == FILE_COUNTS[name], sorted(digests)
    assert _combined(digests) == combined, json.dumps(digests, indent=1)
    # cohort.json records the same array digests: the 1.0.0 subset still gives the 1.0.0 content hash.
    file_hashes = json.loads((root / "cohort.json").read_text())["file_hashes"]
    v1 = {k: v for k, v in file_hashes.items() if _is_v1_file(k)}
    assert _combined(v1) == v1_content
