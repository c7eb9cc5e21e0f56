"""Weights shipped with pacx: the Stage-1 MAE prior of the ``cpu`` profile.

The paper starts Stage 2 from an MAE pretrained once on all of CheXpert. The ``cpu`` profile
does the same in miniature: ``mae_prior_<name>.safetensors`` is a full MAE (encoder and
decoder) pretrained once on an unpaired synthetic CXR corpus (:func:`pacx.data.synthetic.make_cxr_corpus`
with ``kind="prior"``: the cohort's generator, its own seed and patient ids), and
``mae_prior_<name>.json`` records the architecture, the corpus, the training run and the file's
SHA-256. A configuration names it as ``mae.checkpoint: "prior:<name>"``;
:func:`resolve_mae_checkpoint` checks the hash before anything loads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacx.io import load_json, save_json, save_safetensors

__all__ = ["PRIOR_PREFIX", "list_priors", "prior_metadata", "resolve_mae_checkpoint", "write_prior"]

PRIOR_PREFIX = "prior:"
_HERE = Path(__file__).resolve().parent


def _files(name: str, folder: Path | None = None) -> tuple[Path, Path]:
    folder = _HERE if folder is None else folder
    return folder / f"mae_prior_{name}.safetensors", folder / f"mae_prior_{name}.json"


def list_priors() -> list[str]:
    """Names of the shipped priors (``"prior:<name>"`` in a configuration)."""
    return sorted(p.stem[len("mae_prior_"):] for p in _HERE.glob("mae_prior_*.json"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prior_metadata(name: str) -> dict[str, Any]:
    """The JSON record of a shipped prior (architecture, corpus, training, SHA-256).

    Raises:
        ValueError: when no prior of that name is shipped (the shipped names are listed).
    """
    weights, meta = _files(name)
    if not (weights.is_file() and meta.is_file()):
        raise ValueError(f"no shipped MAE prior named {name!r}; shipped priors: {list_priors()}")
    return load_json(meta)


def resolve_mae_checkpoint(value: str | Path) -> Path:
    """The weights file a ``mae.checkpoint`` value names: ``"prior:<name>"`` or a path.

    A shipped prior is verified against the SHA-256 in its JSON record first.

    Raises:
        ValueError: for an unknown prior, or a prior whose file does not match its recorded hash.
        FileNotFoundError: for a path that does not exist.
    """
    text = str(value)
    if not text.startswith(PRIOR_PREFIX):
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"mae.checkpoint: {path} does not exist")
        return path
    name = text[len(PRIOR_PREFIX):]
    meta = prior_metadata(name)
    weights = _files(name)[0]
    actual = _sha256(weights)
    if actual != meta["sha256"]:
        raise ValueError(f"{weights}: SHA-256 {actual} does not match the recorded {meta['sha256']}; the shipped "
                         "prior is corrupt (reinstall pacx or rebuild it with recipes/pretrain_mae.py --profile prior)")
    return weights


def write_prior(name: str, state_dict: Mapping[str, Any], record: Mapping[str, Any],
                folder: str | Path | None = None) -> Path:
    """Write ``mae_prior_<name>.safetensors`` and its JSON record (with the file's SHA-256) atomically.

    Args:
        name: the prior's name.
        state_dict: the full MAE state dict.
        record: what to record beside the weights (architecture, corpus, training run).
        folder: destination (the package folder by default).

    Returns:
        The weights path.
    """
    weights, meta = _files(name, None if folder is None else Path(folder))
    save_safetensors(dict(state_dict), weights)
    save_json({**record, "file": weights.name, "sha256": _sha256(weights)}, meta)
    return weights
