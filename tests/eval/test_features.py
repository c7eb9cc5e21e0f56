"""Feature extraction and its content-keyed cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from pacx.eval.features import dataset_fingerprint, encoder_fingerprint, extract_features, feature_cache_key


class DictImages(Dataset):
    def __init__(self, images: torch.Tensor, scale: float = 1.0) -> None:
        self.images, self.scale = images, scale

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"cxr": self.images[i] * self.scale, "label": i % 2, "path": f"img{i}.png"}


def _count_forward(vit) -> list[int]:
    calls = [0]
    vit.patch_embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_pools_shapes_and_token_matches_vit(tiny_vit):
    x = torch.randn(5, 3, 32, 32)
    token = extract_features(tiny_vit, DictImages(x), batch_size=2)
    mean = extract_features(tiny_vit, x, pool="mean")
    patch = extract_features(tiny_vit, x, pool="patch")
    assert token.shape == (5, 32) and token.dtype == np.float32
    assert mean.shape == (5, 32)
    assert patch.shape == (5, 16, 32) and patch.dtype == np.float16
    tiny_vit.eval()
    with torch.no_grad():
        np.testing.assert_allclose(token, tiny_vit(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(mean, patch.astype(np.float32).mean(axis=1), atol=2e-2)


def test_cache_reuses_and_keys_change(tmp_path, make_vit):
    vit = make_vit(0)
    vit.train()
    calls = _count_forward(vit)
    ds = DictImages(torch.randn(6, 3, 32, 32))
    first = extract_features(vit, ds, cache_dir=tmp_path, batch_size=4)
    assert calls[0] == 2 and vit.training  # two batches; training flag restored
    again = extract_features(vit, ds, cache_dir=tmp_path, batch_size=4)
    assert calls[0] == 2  # served from the cache
    np.testing.assert_array_equal(first, again)
    sidecars = list(tmp_path.glob("*.json"))
    assert len(sidecars) == 1 and len(list(tmp_path.glob("*.npy"))) == 1
    meta = json.loads(sidecars[0].read_text())
    assert meta["pool"] == "token" and meta["shape"] == [6, 32] and meta["dataset_len"] == 6

    key = feature_cache_key(vit, ds, "token")[0]
    assert feature_cache_key(vit, ds, "mean")[0] != key
    assert feature_cache_key(vit, DictImages(ds.images, scale=2.0), "token")[0] != key  # another transform
    assert feature_cache_key(vit, ds, "token", dataset_key="split=test")[0] != key
    assert feature_cache_key(vit, ds, "token", key_extra="hflip")[0] != key
    assert feature_cache_key(make_vit(1), ds, "token")[0] != key  # other weights
    with torch.no_grad():
        vit.blocks[0].mlp.fc1.weight[0, 0] += 1.0
    assert feature_cache_key(vit, ds, "token")[0] != key
    extract_features(vit, ds, cache_dir=tmp_path)
    assert calls[0] == 3 and len(list(tmp_path.glob("*.npy"))) == 2


def test_fingerprints_are_deterministic(make_vit):
    assert encoder_fingerprint(make_vit(0)) == encoder_fingerprint(make_vit(0)) != encoder_fingerprint(make_vit(1))
    x = torch.randn(4, 3, 32, 32)
    assert dataset_fingerprint(DictImages(x)) == dataset_fingerprint(DictImages(x.clone()))
    assert dataset_fingerprint(x) != dataset_fingerprint(x[:3])


def test_validation(tiny_vit):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="pool"):
        extract_features(tiny_vit, x, pool="cls")
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(tiny_vit, x, batch_size=0)
    with pytest.raises(ValueError, match="'cxr'"):
        extract_features(tiny_vit, [{"image": x[0]}])
    with pytest.raises(ValueError, match="shape"):
        extract_features(tiny_vit, torch.randn(3, 32, 32))
