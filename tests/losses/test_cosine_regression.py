"""CosineRegressionLoss: value, detached target, zero vectors, precision and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacx.losses import CosineRegressionLoss


def _reference(pred: np.ndarray, target: np.ndarray) -> float:
    cos = [float(np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t))) for p, t in zip(pred, target)]
    return float(np.mean([1.0 - c for c in cos]))


def test_matches_float64_reference() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((7, 12)), rng.standard_normal((7, 12))
    got = CosineRegressionLoss()(torch.from_numpy(pred), torch.from_numpy(target))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_reference(pred, target), rel=1e-12)


def test_known_values_and_scale_invariance() -> None:
    fn = CosineRegressionLoss()
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert fn(x, x).item() == pytest.approx(0.0, abs=1e-12)
    assert fn(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-12)
    assert fn(x, -x).item() == pytest.approx(2.0, abs=1e-12)
    orthogonal = torch.tensor([[3.0, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert fn(x, orthogonal).item() == pytest.approx(1.0, abs=1e-12)
    # Mean over the batch: row 0 identical (0), row 1 opposite (2).
    target = torch.stack([x[0], -x[1]])
    assert fn(x, target).item() == pytest.approx(1.0, abs=1e-12)


def test_target_is_detached() -> None:
    pred = torch.randn(4, 8, requires_grad=True)
    target = torch.randn(4, 8, requires_grad=True)
    CosineRegressionLoss()(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None


def test_gradcheck() -> None:
    pred = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, dtype=torch.float64)
    fn = CosineRegressionLoss()
    assert torch.autograd.gradcheck(lambda p: fn(p, target), (pred,), eps=1e-6, atol=1e-8)


def test_zero_vectors_give_finite_values() -> None:
    pred = torch.zeros(2, 4, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss = CosineRegressionLoss()(pred, target)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)  # a zero vector has cosine 0 with anything
    assert torch.isfinite(pred.grad).all()


def test_bf16_autocast_computes_in_float32() -> None:
    pred, target = torch.randn(16, 32), torch.randn(16, 32)
    fn = CosineRegressionLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(pred, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fn(pred, target), rtol=1e-6, atol=1e-6)
    assert fn(pred.bfloat16(), target.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.randn(4), torch.randn(4), "pred must be a 2-D"),
        (torch.randn(4, 3), torch.randn(4, 3, 1), "target must be a 2-D"),
        (torch.ones(4, 3, dtype=torch.int64), torch.randn(4, 3), "pred must be a 2-D floating-point"),
        (torch.randn(4, 3), torch.randn(5, 3), r"same shape.*\(4, 3\).*\(5, 3\)"),
        (torch.randn(0, 3), torch.randn(0, 3), "at least one row"),
        (torch.tensor([[float("nan"), 1.0]]), torch.randn(1, 2), "pred must contain only finite"),
        (torch.randn(1, 2), torch.tensor([[float("inf"), 1.0]]), "target must contain only finite"),
    ],
)
def test_forward_errors(pred: torch.Tensor, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CosineRegressionLoss()(pred, target)


@pytest.mark.parametrize("eps", [0.0, -1e-8, float("nan")])
def test_constructor_errors(eps: float) -> None:
    with pytest.raises(ValueError, match="eps must be"):
        CosineRegressionLoss(eps=eps)
