"""Tests for pacx.nets.teachers: frozen semantics, ECG / lab teachers and embedding extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pacx.nets import (
    ECGTeacher,
    LabDAE,
    LabTeacher,
    Teacher,
    compute_teacher_embeddings,
    net1d_small,
)


class _Toy(Teacher):
    """A third modality: an MLP with BatchNorm and Dropout over a (B, 4) ``toy`` key."""

    required_keys = ("toy",)

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, dim))
        self.embed_dim = dim
        self.freeze()

    def _embed(self, inputs):
        return self.mlp(inputs["toy"].float())


class _DictDataset(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.labs = torch.rand(n, 50, generator=g)
        self.observed = (torch.rand(n, 50, generator=g) > 0.3).float()
        self.ecg = torch.randn(n, 12, 200, generator=g)

    def __len__(self) -> int:
        return len(self.labs)

    def __getitem__(self, i: int) -> dict:
        return {"labs": self.labs[i], "labs_observed": self.observed[i], "ecg": self.ecg[i], "index": i}


# ---------------------------------------------------------------- the two built-in wrappers and a third


def test_builtin_teacher_modules() -> None:
    teacher = LabTeacher(LabDAE())
    assert teacher.embed_dim == 256 and teacher.is_frozen and teacher.required_keys == ("labs", "labs_observed")
    assert ECGTeacher(net1d_small(n_classes=0)).embed_dim == 128


def test_lab_teacher_reads_the_keys_it_is_given() -> None:
    dae = LabDAE(num_labs=7, latent_dim=16, hidden_dim=32)
    teacher = LabTeacher(dae, value_key="vitals", observed_key="vitals_observed")
    values, observed = torch.rand(3, 7), (torch.rand(3, 7) > 0.5).float()
    out = teacher.embed({"vitals": values, "vitals_observed": observed})
    assert torch.equal(out, dae.encode(values, observed))
    with pytest.raises(ValueError, match="vitals"):
        teacher.embed({"labs": values, "labs_observed": observed})


def test_toy_third_teacher_end_to_end() -> None:
    teacher = _Toy(dim=5)
    batches = [{"toy": torch.randn(3, 4)} for _ in range(2)]
    out = compute_teacher_embeddings(teacher, batches)
    assert out.shape == (6, 5) and out.dtype == np.float32


# ---------------------------------------------------------------- frozen semantics


def test_frozen_teacher_survives_parent_train_mode() -> None:
    torch.manual_seed(0)
    net = net1d_small(n_classes=0, use_bn=True, use_do=True)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
    teacher = ECGTeacher(net)
    parent = nn.ModuleDict({"teacher": teacher, "head": nn.Linear(128, 2)})
    buffers_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    parent.train()
    assert parent.training and parent["head"].training
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())

    batch = {"ecg": torch.randn(4, 12, 300)}
    with torch.enable_grad():
        first = teacher.embed(batch)
        second = teacher(batch)
    assert not first.requires_grad
    torch.testing.assert_close(first, second)  # no dropout, no batch statistics
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, buffers_before[k]), k
    torch.testing.assert_close(first, net.eval().forward_features(batch["ecg"]))


def test_unfreeze_restores_training() -> None:
    teacher = LabTeacher(LabDAE(), frozen=True)
    teacher.unfreeze().train()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert not LabTeacher(LabDAE(), frozen=False).is_frozen


def test_toy_teacher_bn_stats_do_not_drift() -> None:
    teacher = _Toy()
    wrapper = nn.Sequential(teacher)
    wrapper.train()
    bn = teacher.mlp[1]
    mean_before = bn.running_mean.clone()
    teacher.embed({"toy": torch.randn(8, 4) * 10 + 3})
    assert torch.equal(bn.running_mean, mean_before) and bn.num_batches_tracked.item() == 0


# ---------------------------------------------------------------- ECG and lab teachers


def test_lab_teacher_matches_encode_and_accepts_numpy() -> None:
    dae = LabDAE().eval()
    teacher = LabTeacher(dae)
    values = torch.rand(5, 50)
    observed = (torch.rand(5, 50) > 0.5).float()
    placeholder = values.clone()
    placeholder[observed == 0] = 0.5
    out = teacher.embed(
        {"labs": placeholder.double().numpy(), "labs_observed": observed.numpy().astype(np.int64), "cxr": None}
    )
    assert out.dtype == torch.float32
    assert out.shape == (5, 256)
    with torch.no_grad():
        torch.testing.assert_close(out, dae.encode(values, observed))


def test_teacher_rejects_bad_batches() -> None:
    teacher = LabTeacher(LabDAE())
    with pytest.raises(ValueError, match=r"lacks required key\(s\) \['labs_observed'\]"):
        teacher.embed({"labs": torch.rand(2, 50)})
    with pytest.raises(ValueError, match="must be a dict"):
        teacher.embed(torch.rand(2, 50))
    with pytest.raises(ValueError, match=r"batch\['labs'\] must be a tensor or array"):
        teacher.embed({"labs": "not numbers", "labs_observed": torch.ones(2, 50)})
    with pytest.raises(ValueError, match=r"\(B, 50\)"):
        teacher.embed({"labs": torch.rand(2, 49), "labs_observed": torch.ones(2, 49)})
    ecg = ECGTeacher(net1d_small(n_classes=0))
    with pytest.raises(ValueError, match=r"\(B, 12, T\)"):
        ecg.embed({"ecg": torch.randn(2, 1, 100)})
    with pytest.raises(ValueError, match="must be a Net1D"):
        ECGTeacher(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="must be a LabDAE"):
        LabTeacher(nn.Linear(2, 2))


def test_wrong_embedding_shape_is_caught() -> None:
    class Broken(Teacher):
        required_keys = ("x",)

        def __init__(self):
            super().__init__()
            self.embed_dim = 4

        def _embed(self, inputs):
            return inputs["x"][:, :3]

    with pytest.raises(ValueError, match=r"must return shape \(2, 4\), got \(2, 3\)"):
        Broken().embed({"x": torch.zeros(2, 5)})
    with pytest.raises(NotImplementedError):
        Teacher().embed({})


# ---------------------------------------------------------------- compute_teacher_embeddings


def test_compute_embeddings_in_order() -> None:
    data = _DictDataset(10)
    dae = LabDAE().eval()
    teacher = LabTeacher(dae)
    out = compute_teacher_embeddings(teacher, DataLoader(data, batch_size=3, shuffle=False), device="cpu")
    assert out.shape == (10, 256) and out.dtype == np.float32
    with torch.no_grad():
        expected = dae.encode(data.labs, data.observed).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    ecg = ECGTeacher(net1d_small(n_classes=0, kernel_size=5))
    out_ecg = compute_teacher_embeddings(ecg, DataLoader(data, batch_size=4), progress=True)
    with torch.no_grad():
        np.testing.assert_allclose(out_ecg, ecg.net.forward_features(data.ecg).numpy(), rtol=1e-4, atol=1e-5)


def test_compute_embeddings_edge_cases() -> None:
    teacher = LabTeacher(LabDAE())
    assert compute_teacher_embeddings(teacher, []).shape == (0, 256)
    with pytest.raises(ValueError, match="shuffles"):
        compute_teacher_embeddings(teacher, DataLoader(_DictDataset(4), batch_size=2, shuffle=True))
    with pytest.raises(ValueError, match="batch 0 must be a dict"):
        compute_teacher_embeddings(teacher, [torch.zeros(2, 50)])
    with pytest.raises(ValueError, match="must be a Teacher"):
        compute_teacher_embeddings(nn.Linear(2, 2), [])

    nan_teacher = _Toy()
    with pytest.raises(ValueError, match="batch 1 produced non-finite"):
        compute_teacher_embeddings(nan_teacher, [{"toy": torch.zeros(2, 4)}, {"toy": torch.full((2, 4), float("nan"))}])


def test_compute_embeddings_restores_mode_of_unfrozen_teacher() -> None:
    teacher = LabTeacher(LabDAE(), frozen=False).train()
    compute_teacher_embeddings(teacher, [{"labs": torch.rand(2, 50), "labs_observed": torch.ones(2, 50)}])
    assert teacher.training
