"""GlobalInfoNCE in one process: formula, temperature, gradients, precision, errors and diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pacx.losses import GlobalInfoNCE
from pacx.losses.global_infonce import global_infonce
from tests.losses._host_sync import forbid_host_sync
from tests.losses._infonce_reference import reference_infonce


def _pair(batch: int = 6, dim: int = 5, seed: int = 0, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, generator=gen, dtype=dtype)
    # Correlated with a so that the loss is in a realistic range rather than near log(B).
    b = a + 0.7 * torch.randn(batch, dim, generator=gen, dtype=dtype)
    return a, b


@pytest.mark.parametrize("label_smoothing", [0.0, 0.02, 0.3])
@pytest.mark.parametrize("learnable_temperature", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_float64_reference(label_smoothing: float, learnable_temperature: bool, normalize: bool) -> None:
    a, b = _pair()
    if not normalize:
        a, b = 0.3 * a, 0.3 * b  # keep raw dot products in a range where the loss is informative
    fn = GlobalInfoNCE(
        temperature=0.1,
        learnable_temperature=learnable_temperature,
        label_smoothing=label_smoothing,
        normalize=normalize,
    ).double()
    expected = reference_infonce(a.numpy(), b.numpy(), fn.logit_scale_value, label_smoothing, normalize)
    assert fn(a, b).dtype == torch.float64
    assert fn(a, b).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_matches_reference_in_float32() -> None:
    a, b = _pair(batch=16, dim=8, seed=1, dtype=torch.float32)
    fn = GlobalInfoNCE()
    expected = reference_infonce(a.double().numpy(), b.double().numpy(), fn.logit_scale_value, 0.02, True)
    out = fn(a, b)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_matches_torch_cross_entropy_with_label_smoothing() -> None:
    a, b = _pair(batch=7, dim=3, seed=2)
    scale = 5.0
    logits = scale * F.normalize(a) @ F.normalize(b).T
    targets = torch.arange(7)
    expected = 0.5 * (
        F.cross_entropy(logits, targets, label_smoothing=0.1) + F.cross_entropy(logits.T, targets, label_smoothing=0.1)
    )
    got = global_infonce(a, b, scale, label_smoothing=0.1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_symmetric_in_its_arguments() -> None:
    a, b = _pair(seed=3)
    fn = GlobalInfoNCE().double()
    torch.testing.assert_close(fn(a, b), fn(b, a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("log_scale", "expected_scale"), [(math.log(0.5), 1.0), (math.log(500.0), 100.0)])
def test_scale_is_clamped_at_both_bounds(log_scale: float, expected_scale: float) -> None:
    a, b = _pair(seed=4)
    fn = GlobalInfoNCE(label_smoothing=0.05).double()
    with torch.no_grad():
        fn.logit_scale.fill_(log_scale)
    assert fn.logit_scale_value == pytest.approx(expected_scale, rel=1e-12)
    loss = fn(a, b)
    assert loss.item() == pytest.approx(reference_infonce(a.numpy(), b.numpy(), expected_scale, 0.05, True), rel=1e-12)
    # Clamping inside forward (as the paper does) stops the gradient once the scale is out of range.
    loss.backward()
    assert fn.logit_scale.grad is not None and fn.logit_scale.grad.item() == 0.0


def test_temperature_parameter_or_buffer() -> None:
    learnable = GlobalInfoNCE(temperature=0.07)
    assert isinstance(learnable.logit_scale, torch.nn.Parameter)
    assert learnable.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert learnable.logit_scale_value == pytest.approx(1 / 0.07, rel=1e-6)
    assert [name for name, _ in learnable.named_parameters()] == ["logit_scale"]

    fixed = GlobalInfoNCE(temperature=0.07, learnable_temperature=False)
    assert list(fixed.parameters()) == []
    assert "logit_scale" in dict(fixed.named_buffers())
    assert set(fixed.state_dict()) == {"logit_scale"} == set(learnable.state_dict())
    a, b = _pair(dtype=torch.float32)
    assert not fixed(a, b).requires_grad


def test_learnable_scale_receives_gradient_inside_range() -> None:
    a, b = _pair(seed=5)
    fn = GlobalInfoNCE(temperature=0.1).double()
    fn(a, b).backward()
    assert fn.logit_scale.grad is not None and fn.logit_scale.grad.abs().item() > 0


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_gradcheck_inputs_and_logit_scale(label_smoothing: float) -> None:
    a, b = _pair(batch=4, dim=3, seed=6)
    a.requires_grad_(True)
    b.requires_grad_(True)
    fn = GlobalInfoNCE(temperature=0.2, label_smoothing=label_smoothing).double()
    log_scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)  # inside [1, 100]

    def loss_of(a_in: torch.Tensor, b_in: torch.Tensor, log_scale_in: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(fn, {"logit_scale": log_scale_in}, (a_in, b_in))

    assert torch.autograd.gradcheck(loss_of, (a, b, log_scale), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_shared_module_over_two_pairs() -> None:
    cxr, ecg = _pair(seed=7)
    _, labs = _pair(seed=8)
    fn = GlobalInfoNCE().double()
    loss = 0.5 * (fn(cxr, ecg) + fn(cxr, labs))
    scale = fn.logit_scale_value
    expected = 0.5 * (
        reference_infonce(cxr.numpy(), ecg.numpy(), scale, 0.02, True)
        + reference_infonce(cxr.numpy(), labs.numpy(), scale, 0.02, True)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_zero_vectors_give_finite_loss_and_gradients() -> None:
    a, b = _pair(seed=9)
    a[0] = 0.0
    b[2] = 0.0
    a.requires_grad_(True)
    b.requires_grad_(True)
    loss = GlobalInfoNCE().double()(a, b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


class _RecordMatmuls(TorchFunctionMode):
    """Records the shape and dtype of every matmul result."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[tuple[tuple[int, ...], torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in {"matmul", "__matmul__", "mm"}:
            self.results.append((tuple(out.shape), out.dtype))
        return out


def test_bf16_autocast_identical_embeddings_at_max_scale() -> None:
    fn = GlobalInfoNCE(temperature=0.01)  # scale 100, the upper bound
    row = torch.randn(1, 32)
    a = row.repeat(8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _RecordMatmuls() as recorder:
            loss = fn(a, a.clone())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Every logit is equal to 100, so each row's cross-entropy is log(B) with or without smoothing.
    assert loss.item() == pytest.approx(math.log(8), rel=1e-5)
    assert (8, 8) in [shape for shape, _ in recorder.results]
    assert all(dtype == torch.float32 for _, dtype in recorder.results)


def test_bf16_autocast_and_bf16_inputs_match_float32() -> None:
    a, b = _pair(batch=32, dim=64, seed=10, dtype=torch.float32)
    fn = GlobalInfoNCE(temperature=0.01)
    expected = fn(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(a, b)
    # bf16 logits at scale 100 would be off by ~0.1; float32 logits agree to rounding.
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    a16, b16 = a.bfloat16(), b.bfloat16()
    got16 = fn(a16, b16)
    assert got16.dtype == torch.float32
    torch.testing.assert_close(got16, fn(a16.float(), b16.float()), rtol=1e-6, atol=1e-6)


def test_diagnostics_on_aligned_and_shifted_embeddings() -> None:
    eye = torch.eye(6, dtype=torch.float64)
    fn = GlobalInfoNCE(temperature=0.1, label_smoothing=0.1).double()
    loss, diag = fn(eye, eye.clone(), return_diagnostics=True)
    assert set(diag) == {"top1_a_to_b", "top1_b_to_a", "scale", "infonce", "mi_lower_bound"}
    assert all(not value.requires_grad for value in diag.values())
    assert diag["top1_a_to_b"].item() == 1.0 and diag["top1_b_to_a"].item() == 1.0
    assert diag["scale"].item() == pytest.approx(fn.logit_scale_value)
    scale = fn.logit_scale_value
    infonce = reference_infonce(eye.numpy(), eye.numpy(), scale, 0.0, True)
    assert diag["infonce"].item() == pytest.approx(infonce, rel=1e-12)
    assert diag["mi_lower_bound"].item() == pytest.approx(math.log(6) - infonce, rel=1e-12)
    assert loss.item() == pytest.approx(reference_infonce(eye.numpy(), eye.numpy(), scale, 0.1, True), rel=1e-12)
    # The diagnostics do not change the loss.
    assert fn(eye, eye.clone()).item() == loss.item()

    # a_i matches b_{i+1}: nothing is retrieved in either direction.
    _, diag = fn(eye, eye.roll(1, dims=0), return_diagnostics=True)
    assert diag["top1_a_to_b"].item() == 0.0 and diag["top1_b_to_a"].item() == 0.0

    # Rows 0-2 aligned, rows 3-5 cycled among themselves: half retrieved both ways.
    b = eye.clone()
    b[3:] = eye[3:].roll(1, dims=0)
    _, diag = fn(eye, b, return_diagnostics=True)
    assert diag["top1_a_to_b"].item() == 0.5 and diag["top1_b_to_a"].item() == 0.5


def test_functional_accepts_float_or_tensor_scale() -> None:
    a, b = _pair(seed=11)
    expected = reference_infonce(a.numpy(), b.numpy(), 3.0, 0.0, True)
    assert global_infonce(a, b, 3.0).item() == pytest.approx(expected, rel=1e-12)
    assert global_infonce(a, b, torch.tensor(3.0)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.randn(4), torch.randn(4, 3), "a must be 2-D"),
        (torch.randn(4, 3), torch.randn(4, 3, 1), "b must be 2-D"),
        (torch.randn(4, 3), torch.randn(5, 3), r"same shape.*\(4, 3\).*\(5, 3\)"),
        (torch.randn(4, 3), torch.randn(4, 2), r"same shape.*\(4, 3\).*\(4, 2\)"),
        (torch.randn(1, 3), torch.randn(1, 3), "at least 2 candidates.*got 1"),
        (torch.randn(0, 3), torch.randn(0, 3), "at least 2 candidates.*got 0"),
        (torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64), "floating point"),
    ],
)
def test_forward_errors(a: torch.Tensor, b: torch.Tensor, match: str) -> None:
    for check_finite in (False, True):  # shape errors need no device value: raised either way
        with pytest.raises(ValueError, match=match):
            GlobalInfoNCE(check_finite=check_finite)(a, b)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.randn(2, 2), "a must contain only finite"),
        (torch.randn(2, 2), torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "b must contain only finite"),
    ],
)
def test_check_finite_raises_on_non_finite_inputs(a: torch.Tensor, b: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GlobalInfoNCE(check_finite=True)(a, b)
    with pytest.raises(ValueError, match=match):
        global_infonce(a, b, 10.0, check_finite=True)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_give_a_non_finite_loss_without_check(
    normalize: bool, label_smoothing: float, bad: float
) -> None:
    # The default path reads no device value, so a bad input must show in the loss itself (never a finite,
    # silently wrong value). Cases: one entry of a or of b; a whole row; an Inf facing a zero in its pair.
    fn = GlobalInfoNCE(label_smoothing=label_smoothing, normalize=normalize).double()
    for which in ("a", "b"):
        for place in ((1, 2), (3, slice(None))):
            a, b = _pair(seed=20)
            (a if which == "a" else b)[place] = bad
            assert not torch.isfinite(fn(a, b)), (which, place)
    a, b = _pair(seed=21)
    a[0, 0], b[0, 0] = bad, 0.0
    assert not torch.isfinite(fn(a, b))


@pytest.mark.parametrize("scale", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_tensor_scale_gives_a_non_finite_loss_without_check(scale: float) -> None:
    a, b = _pair(seed=22)
    assert not torch.isfinite(global_infonce(a, b, torch.tensor(scale, dtype=torch.float64)))
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        global_infonce(a, b, torch.tensor(scale, dtype=torch.float64), check_finite=True)


def test_forbid_host_sync_detects_reads() -> None:
    x = torch.ones(3)
    probes = [lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: torch.tensor([1.0]),
              lambda: torch.nonzero(x), lambda: float(x.sum())]
    with forbid_host_sync():
        for probe in probes:
            with pytest.raises(AssertionError, match="host sync"):
                probe()


@pytest.mark.parametrize("return_diagnostics", [False, True])
def test_forward_and_backward_read_no_device_value(return_diagnostics: bool) -> None:
    fn = GlobalInfoNCE(label_smoothing=0.1)
    a, b = _pair(batch=8, dim=4, seed=23, dtype=torch.float32)
    a.requires_grad_(True)
    b.requires_grad_(True)
    with forbid_host_sync():
        out = fn(a, b, return_diagnostics=return_diagnostics)
        loss = out[0] if return_diagnostics else out
        loss.backward()
        global_infonce(a.detach(), b.detach(), 5.0)  # a float scale must not become a host-built tensor either
    assert a.grad is not None and fn.logit_scale.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature must be"),
        ({"temperature": -0.1}, "temperature must be"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"max_logit_scale": 0.5}, "max_logit_scale must be"),
        ({"temperature": 0.001}, r"1 / temperature must lie in \[1, max_logit_scale=100.0\]"),
        ({"temperature": 2.0}, r"1 / temperature must lie in"),
        ({"label_smoothing": -0.1}, r"label_smoothing must be in \[0, 1\)"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GlobalInfoNCE(**kwargs)


def test_functional_errors() -> None:
    a, b = _pair()
    with pytest.raises(ValueError, match="label_smoothing"):
        global_infonce(a, b, 10.0, label_smoothing=1.5)
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        global_infonce(a, b, 0.0)
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        global_infonce(a, b, float("nan"))
    with pytest.raises(ValueError, match="scale must be a scalar"):
        global_infonce(a, b, torch.ones(2))


def test_repr_lists_options() -> None:
    text = repr(GlobalInfoNCE(label_smoothing=0.0))
    assert "label_smoothing=0.0" in text and "max_logit_scale=100.0" in text and "check_finite=False" in text


def test_large_batch_loss_is_near_log_batch_for_random_embeddings() -> None:
    # Sanity of scale: with unit temperature and random embeddings the loss is close to log(B).
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((512, 256)))
    b = torch.from_numpy(rng.standard_normal((512, 256)))
    loss = global_infonce(a, b, 1.0)
    assert abs(loss.item() - math.log(512)) < 0.01


@pytest.mark.parametrize("chunk_elements", [1, 14, 2**24])
def test_row_chunking_does_not_change_loss_or_gradients(monkeypatch: pytest.MonkeyPatch, chunk_elements: int) -> None:
    # With 7 columns: 1 -> one row per block, 14 -> blocks of 2 rows and a remainder, 2**24 -> one block.
    import pacx.losses.global_infonce as module

    a, b = _pair(batch=7, dim=4, seed=12)
    fn = GlobalInfoNCE(temperature=0.2, label_smoothing=0.1).double()
    expected = reference_infonce(a.numpy(), b.numpy(), fn.logit_scale_value, 0.1, True)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", chunk_elements)
    assert fn(a, b).item() == pytest.approx(expected, rel=1e-12)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (a, b), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_compiles_as_one_graph_without_host_reads() -> None:
    # A host read (the old per-call .tolist()) would break the graph: fullgraph=True turns that into an error.
    fn = GlobalInfoNCE(label_smoothing=0.1)
    a, b = _pair(batch=8, dim=4, seed=24, dtype=torch.float32)
    a.requires_grad_(True)
    expected = fn(a, b)
    expected.backward()
    grad, a.grad = a.grad, None
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    got = compiled(a, b)
    got.backward()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, grad, rtol=0, atol=0)
