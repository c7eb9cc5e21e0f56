"""GlobalInfoNCE across 2 gloo processes: the global-negatives property and collective error handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pacx.losses import GlobalInfoNCE
from tests.losses._infonce_reference import reference_row_losses
from tests.utils import run_distributed

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
# (label_smoothing, learnable_temperature, normalize)
CONFIGS = [(0.02, True, True), (0.3, True, True), (0.0, False, False)]


def _full_batch(seed: int = 0, per_rank: int = 5, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((WORLD_SIZE * per_rank, dim))
    b = 0.5 * a + 0.5 * rng.standard_normal((WORLD_SIZE * per_rank, dim))
    return a, b


def _loss_and_grads(a: np.ndarray, b: np.ndarray, config: tuple[float, bool, bool]) -> dict[str, object]:
    """Loss, diagnostics and gradients of one process's batch (run both in workers and in the parent)."""
    smoothing, learnable, normalize = config
    fn = GlobalInfoNCE(temperature=0.2, learnable_temperature=learnable, label_smoothing=smoothing, normalize=normalize)
    fn = fn.double()
    a_t = torch.from_numpy(a).requires_grad_(True)
    b_t = torch.from_numpy(b).requires_grad_(True)
    loss, diag = fn(a_t, b_t, return_diagnostics=True)
    loss.backward()
    return {
        "loss": loss.item(),
        "a_grad": a_t.grad.numpy(),
        "b_grad": b_t.grad.numpy(),
        "scale_grad": fn.logit_scale.grad.item() if learnable else None,
        "scale": fn.logit_scale_value,
        "diag": {k: v.item() for k, v in diag.items()},
    }


def _worker_equivalence(rank: int, world_size: int, a: np.ndarray, b: np.ndarray) -> list[dict[str, object]]:
    rows = slice(rank * (len(a) // world_size), (rank + 1) * (len(a) // world_size))
    return [_loss_and_grads(a[rows], b[rows], config) for config in CONFIGS]


def _worker_all(rank: int, world_size: int, a: np.ndarray, b: np.ndarray) -> dict[str, object]:
    # One spawn for every check: starting processes dominates the run time of these tests.
    return {"equivalence": _worker_equivalence(rank, world_size, a, b), "errors": _worker_errors(rank, world_size)}


@pytest.fixture(scope="module")
def dist_results() -> list[dict[str, object]]:
    a, b = _full_batch()
    return run_distributed(_worker_all, world_size=WORLD_SIZE, args=(a, b), timeout=120)


def test_two_ranks_equal_one_process_on_the_whole_batch(dist_results: list[dict[str, object]]) -> None:
    a, b = _full_batch()
    per_rank = len(a) // WORLD_SIZE
    ranks = [result["equivalence"] for result in dist_results]
    for index, config in enumerate(CONFIGS):
        single = _loss_and_grads(a, b, config)
        results = [ranks[r][index] for r in range(WORLD_SIZE)]

        # Loss: each rank averages over its own rows against all N columns, so the mean over ranks
        # (what DDP effectively optimises) is the whole-batch loss, and each rank's value is the
        # reference restricted to its rows.
        assert np.mean([r["loss"] for r in results]) == pytest.approx(single["loss"], rel=1e-12, abs=1e-12)
        rows_ab, rows_ba = reference_row_losses(a, b, single["scale"], config[0], config[2])
        for rank, result in enumerate(results):
            rows = slice(rank * per_rank, (rank + 1) * per_rank)
            expected = 0.5 * (rows_ab[rows].mean() + rows_ba[rows].mean())
            assert result["loss"] == pytest.approx(expected, rel=1e-12, abs=1e-12)

        # Inputs: the gathered rows send their gradient back to the owning rank, so rank r holds
        # d(sum_q L_q)/d a_r. DDP then divides by the world size when it averages parameter
        # gradients, so grad / W assembled over ranks must equal the whole-batch gradient.
        for name in ("a_grad", "b_grad"):
            assembled = np.concatenate([r[name] for r in results]) / WORLD_SIZE
            np.testing.assert_allclose(assembled, single[name], rtol=1e-10, atol=1e-12)

        # logit_scale is local to each rank (not gathered): DDP's mean of per-rank gradients is exact.
        if config[1]:
            assert np.mean([r["scale_grad"] for r in results]) == pytest.approx(single["scale_grad"], rel=1e-10)

        # Diagnostics see all N = 2 * per_rank candidates.
        for result in results:
            assert result["diag"]["mi_lower_bound"] == pytest.approx(
                math.log(WORLD_SIZE * per_rank) - result["diag"]["infonce"], rel=1e-12
            )
        top1 = np.mean([r["diag"]["top1_a_to_b"] for r in results])
        assert top1 == pytest.approx(single["diag"]["top1_a_to_b"])


def _raises(fn, *args) -> str:
    try:
        fn(*args)
    except ValueError as err:
        return str(err)
    return "no error"


def _worker_errors(rank: int, world_size: int) -> dict[str, object]:
    fn = GlobalInfoNCE()
    gen = torch.Generator().manual_seed(rank)
    out: dict[str, object] = {}
    # Every check is collective, so both ranks raise together and the group stays usable afterwards.
    out["batch"] = _raises(fn, torch.randn(3 + rank, 4, generator=gen), torch.randn(3 + rank, 4, generator=gen))
    out["dim"] = _raises(fn, torch.randn(3, 4 + rank, generator=gen), torch.randn(3, 4 + rank, generator=gen))
    a = torch.randn(3, 4, generator=gen)
    if rank == 1:
        a[0, 0] = float("nan")
    b = torch.randn(3, 4, generator=gen)
    out["nonfinite"] = _raises(GlobalInfoNCE(check_finite=True), a, b)
    # Without the check no rank reads a device value: the NaN reaches every rank's loss through the gather.
    out["nonfinite_unchecked"] = fn(a, b).item()
    out["empty"] = _raises(fn, torch.randn(0, 4), torch.randn(0, 4))
    # One row per rank still gives 2 candidates in total: allowed.
    out["one_row_each"] = fn(torch.randn(1, 4, generator=gen), torch.randn(1, 4, generator=gen)).item()
    return out


def test_collective_errors_raise_on_every_rank(dist_results: list[dict[str, object]]) -> None:
    for result in (r["errors"] for r in dist_results):
        assert "same (batch, dim) on every rank" in result["batch"] and "[(3, 4), (4, 4)]" in result["batch"]
        assert "[(3, 4), (3, 5)]" in result["dim"]
        assert "a must contain only finite values" in result["nonfinite"] and "rank(s) [1]" in result["nonfinite"]
        assert math.isnan(result["nonfinite_unchecked"])
        assert "at least 2 candidates" in result["empty"]
        assert math.isfinite(result["one_row_each"])
