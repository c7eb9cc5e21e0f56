"""recipes/distill.py: the shuffled-teacher control and the augmented training step."""

from __future__ import annotations

import numpy as np
import torch

from pacx.pipeline import get_profile, variant_config
from recipes.distill import augmented_step, distill_step, teacher_targets


def _run_folder(tmp_path, n: int = 50):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        folder = tmp_path / "teachers" / split
        folder.mkdir(parents=True)
        for name, dim in (("ecg", 6), ("labs", 4)):
            np.save(folder / f"{name}.npy", rng.standard_normal((n, dim)).astype(np.float32))
    return tmp_path


def test_control_permutes_each_teacher_across_patients(tmp_path) -> None:
    out = _run_folder(tmp_path)
    cfg = {**get_profile("quick"), "seed": 0}
    plain = teacher_targets(cfg, out, "train")
    control = teacher_targets(variant_config(cfg, "shuffled_teachers"), out, "train")
    for name in ("ecg", "labs"):
        a, b = np.asarray(plain[name]), np.asarray(control[name])
        assert a.shape == b.shape and not np.array_equal(a, b)
        # the same rows (the teacher's distribution), in another order (no patient correspondence)
        assert np.array_equal(np.sort(a, axis=0), np.sort(b, axis=0))
        matched = (a[:, None, :] == b[None, :, :]).all(-1)
        assert matched.sum() == len(a) and np.trace(matched) < 5
    # the two teachers are permuted independently, and the permutation is fixed by the seed
    perm = {n: (np.asarray(plain[n])[:, None, :] == np.asarray(control[n])[None]).all(-1).argmax(0)
            for n in ("ecg", "labs")}
    assert not np.array_equal(perm["ecg"], perm["labs"])
    again = teacher_targets(variant_config(cfg, "shuffled_teachers"), out, "train")
    assert all(np.array_equal(again[n], control[n]) for n in control)


def test_augmented_step_augments_only_the_images() -> None:
    seen = {}

    def model(cxr, embeddings):
        seen["cxr"], seen["emb"] = cxr, embeddings
        return cxr.sum(), {}

    batch = {"cxr": torch.zeros(2, 3, 8, 8), "teacher_embeddings": {"ecg": torch.ones(2, 3)}}
    augmented_step(lambda x: x + 1.0)(model, batch)
    assert torch.equal(seen["cxr"], torch.ones(2, 3, 8, 8)) and seen["emb"] is batch["teacher_embeddings"]
    distill_step(model, batch)
    assert torch.equal(seen["cxr"], batch["cxr"])
