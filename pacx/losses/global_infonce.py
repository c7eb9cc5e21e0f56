"""Symmetric InfoNCE with negatives gathered from every rank (the PaCX-MAE Stage 2 contrastive loss)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from pacx.distributed import all_gather_with_grad, get_rank, get_world_size, is_distributed

__all__ = ["GlobalInfoNCE", "global_infonce"]

# Guards the L2 normalisation against zero vectors; small enough not to matter for float32 unit vectors.
_NORM_EPS = 1e-12
# Upper bound on the elements of any temporary the logsumexp helper allocates (64 MiB in float32), so
# the loss needs about one logits matrix in forward and two in backward, whatever the batch size.
_CHUNK_ELEMENTS = 2**24


class _LogSumExpRowsCols(torch.autograd.Function):
    """Row-wise and (optionally) column-wise logsumexp of one logits matrix.

    ``torch.logsumexp`` allocates full-size temporaries in forward and in backward for each
    direction, so the symmetric loss would peak at about five logits matrices. Here both
    directions read the same matrix in row blocks of at most ``_CHUNK_ELEMENTS`` elements, only the
    matrix is saved, and the backward writes the gradient of both directions into one buffer.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, logits: torch.Tensor, with_cols: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = logits.shape
        step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
        lse_rows = logits.new_empty(rows)
        if with_cols:
            # Shifting by the column maximum keeps exp() <= 1 and the sum >= 1: no overflow, no log(0).
            col_max = logits.amax(dim=0)
            col_sum = logits.new_zeros(cols)
        for start in range(0, rows, step):
            block = logits[start : start + step]
            lse_rows[start : start + step] = torch.logsumexp(block, dim=1)
            if with_cols:
                col_sum += (block - col_max).exp_().sum(dim=0)
        lse_cols = col_sum.log_().add_(col_max) if with_cols else logits.new_empty(0)
        ctx.with_cols = with_cols
        ctx.save_for_backward(logits, lse_rows, lse_cols)
        return lse_rows, lse_cols

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_rows: torch.Tensor, grad_cols: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, lse_rows, lse_cols = ctx.saved_tensors
        rows, cols = logits.shape
        step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
        grad = torch.empty_like(logits)
        for start in range(0, rows, step):
            block = logits[start : start + step]
            out = grad[start : start + step]
            # d lse_i / d z_ij = softmax_j(z_i); d lse_col_j / d z_ij = softmax_i(z_:j).
            torch.sub(block, lse_rows[start : start + step, None], out=out)
            out.exp_().mul_(grad_rows[start : start + step, None])
            if ctx.with_cols:
                out.add_((block - lse_cols).exp_().mul_(grad_cols))
        return grad, None


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    """Shape checks that every rank can make on its own (no collective needed)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.ndim != 2:
        raise ValueError(f"a must be 2-D (B, D), got shape {tuple(a.shape)}")
    if b.ndim != 2:
        raise ValueError(f"b must be 2-D (B, D), got shape {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if not a.is_floating_point() or not b.is_floating_point():
        raise ValueError(f"a and b must be floating point, got {a.dtype} and {b.dtype}")


def _status_per_rank(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, world_size: int) -> list[list[int]]:
    """[batch, dim, a non-finite, b non-finite, scale invalid] for every rank, with one host sync.

    The finiteness flags travel with the sizes so that every rank sees every rank's problem and
    raises the same error together, instead of one rank raising while the others hang in the gather.
    """
    with torch.no_grad():
        flags = torch.stack(
            [
                ~torch.isfinite(a).all(),
                ~torch.isfinite(b).all(),
                ~(torch.isfinite(scale) & (scale > 0)),
            ]
        ).to(device=a.device, dtype=torch.int64)
        sizes = torch.tensor(a.shape, device=a.device, dtype=torch.int64)
        status = torch.cat([sizes, flags])
        if world_size > 1:
            gathered = [torch.empty_like(status) for _ in range(world_size)]
            dist.all_gather(gathered, status)
            status = torch.stack(gathered)
        else:
            status = status[None]
    return status.tolist()


def _raise_on_bad_status(status: list[list[int]]) -> int:
    """Raise ValueError for unequal sizes, non-finite values or too few candidates; return N_global."""
    shapes = [(row[0], row[1]) for row in status]
    if len(set(shapes)) > 1:
        raise ValueError(
            "a and b must have the same (batch, dim) on every rank so that the global logits line up, "
            f"got (batch, dim) per rank {shapes}"
        )
    for name, col in (("a", 2), ("b", 3)):
        bad = [rank for rank, row in enumerate(status) if row[col]]
        if bad:
            where = f" on rank(s) {bad}" if len(status) > 1 else ""
            raise ValueError(f"{name} must contain only finite values, got NaN or Inf{where}")
    if any(row[4] for row in status):
        raise ValueError("scale must be finite and positive")
    num_global = sum(row[0] for row in status)
    if num_global < 2:
        raise ValueError(f"InfoNCE needs at least 2 candidates in the global batch, got {num_global}")
    return num_global


def global_infonce(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor | float,
    label_smoothing: float = 0.0,
    normalize: bool = True,
    return_diagnostics: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE of local embeddings against the embeddings of every rank.

    With ``N`` rows in the global batch (all ranks together) and this rank's rows at offset
    ``rank * B``, returns ``0.5 * (CE(s * a @ b_global.T) + CE(s * b @ a_global.T))`` averaged over
    the local rows, with targets ``arange(B) + rank * B``. Cross-entropy with label smoothing
    ``eps`` is the one of ``F.cross_entropy(..., label_smoothing=eps)``: the target puts
    ``1 - eps + eps / N`` on the positive and ``eps / N`` on every other global column. It is
    evaluated in closed form, ``logsumexp(z) - (1 - eps) * z_pos - eps * mean(z)``: one logits
    matrix per direction (one in all in a single process) is kept for backward instead of one
    log-softmax output per direction, and the smoothing term never reads the matrix. The loss
    supports first-order gradients only (no double backward).

    Logits are computed in at least float32 with autocast disabled, whatever the input dtype.

    Args:
        a: (B, D) embeddings of the first modality on this rank.
        b: (B, D) embeddings of the second modality, row i paired with ``a[i]``.
        scale: multiplier of the cosine similarities (``1 / temperature``), a float or a 0-dim
            tensor (gradients flow into it).
        label_smoothing: cross-entropy label smoothing in [0, 1). Defaults to 0.0.
        normalize: L2-normalise ``a`` and ``b`` first. Defaults to True.
        return_diagnostics: also return a dict of detached diagnostics (see
            :meth:`GlobalInfoNCE.forward`). Defaults to False.

    Returns:
        The scalar loss of this rank (the mean over ranks is the loss of the whole global batch),
        or ``(loss, diagnostics)``.

    Raises:
        ValueError: when ``a`` or ``b`` is not 2-D, their shapes differ, they hold non-finite
            values (on any rank), the per-rank (batch, dim) differ, the global batch has fewer
            than 2 rows, ``scale`` is not finite and positive, or ``label_smoothing`` is outside [0, 1).

    Example:
        >>> a, b = torch.randn(8, 16), torch.randn(8, 16)
        >>> global_infonce(a, b, scale=1 / 0.07, label_smoothing=0.02).shape
        torch.Size([])
    """
    _check_pair(a, b)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a scalar, got a tensor of shape {tuple(scale.shape)}")
        scale = scale.reshape(()).to(a.device)
    else:
        scale = torch.tensor(float(scale), device=a.device)

    world_size = get_world_size() if is_distributed() else 1
    rank = get_rank() if world_size > 1 else 0
    num_global = _raise_on_bad_status(_status_per_rank(a.detach(), b.detach(), scale.detach(), world_size))
    batch, dim = a.shape

    # Low-precision logits at scale 100 lose the ranking between close negatives and overflow
    # exp() in fp16, so the whole loss runs in (at least) float32 even inside an autocast region.
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with torch.autocast(device_type=a.device.type, enabled=False):
        a = a.to(dtype)
        b = b.to(dtype)
        scale = scale.to(device=a.device, dtype=dtype)
        if normalize:
            a = F.normalize(a, dim=1, eps=_NORM_EPS)
            b = F.normalize(b, dim=1, eps=_NORM_EPS)

        if world_size > 1:
            # One collective for both modalities; gradients of the gathered rows flow back to their ranks.
            gathered = all_gather_with_grad(torch.cat([a, b], dim=1))
            a_global, b_global = gathered[:, :dim], gathered[:, dim:]
            logits_ab = (a * scale) @ b_global.T  # (B, N): local a against every b
            logits_ba = (b * scale) @ a_global.T  # (B, N): local b against every a
            lse_ab, _ = _LogSumExpRowsCols.apply(logits_ab, False)
            lse_ba, _ = _LogSumExpRowsCols.apply(logits_ba, False)
        else:
            # Single process: the b -> a logits are the transpose, so one matmul serves both directions.
            a_global, b_global = a, b
            logits_ab = (a * scale) @ b.T
            logits_ba = logits_ab.T
            lse_ab, lse_ba = _LogSumExpRowsCols.apply(logits_ab, True)

        # The positive of local row i is global column rank * B + i in both directions: s * <a_i, b_i>.
        positive = scale * (a * b).sum(dim=1)
        infonce = 0.5 * (lse_ab.mean() + lse_ba.mean()) - positive.mean()
        loss = infonce
        if label_smoothing > 0:
            # Mean logit over the N global columns, averaged over local rows, without touching the
            # (B, N) matrix again: mean_i sum_j s <a_i, b_j> = s <mean_i a_i, sum_j b_j>.
            mean_logit_ab = scale * (a.mean(dim=0) @ b_global.sum(dim=0)) / num_global
            mean_logit_ba = scale * (b.mean(dim=0) @ a_global.sum(dim=0)) / num_global
            loss = infonce + label_smoothing * (positive.mean() - 0.5 * (mean_logit_ab + mean_logit_ba))

    if not return_diagnostics:
        return loss
    with torch.no_grad():
        targets = torch.arange(batch, device=a.device) + rank * batch
        infonce_value = infonce.detach()
        diagnostics = {
            "top1_a_to_b": (logits_ab.argmax(dim=1) == targets).to(dtype).mean(),
            "top1_b_to_a": (logits_ba.argmax(dim=1) == targets).to(dtype).mean(),
            "scale": scale.detach().clone(),
            "infonce": infonce_value,
            "mi_lower_bound": math.log(num_global) - infonce_value,
        }
    return loss, diagnostics


class GlobalInfoNCE(nn.Module):
    """Symmetric InfoNCE with global negatives and a learnable, clamped temperature.

    For local embeddings ``a`` and ``b`` of shape (B, D) from two modalities, returns
    ``0.5 * (CE(s * a_local @ b_global.T) + CE(s * b_local @ a_global.T))`` with targets
    ``arange(B) + rank * B`` (CLIP, Radford et al. 2021; PaCX-MAE Stage 2). When
    ``torch.distributed`` is initialised, the embeddings of every rank are gathered WITH
    gradient, so under DDP (gradients mean-averaged over ranks) training is exactly the
    single-process training on the whole global batch; without it, the loss is the plain
    single-process loss.

    The scale is ``s = exp(logit_scale).clamp(1, max_logit_scale)``, with ``logit_scale``
    initialised to ``log(1 / temperature)``. As in PaCX-MAE, clamping happens in ``forward``, so
    ``logit_scale`` receives no gradient while its exponential lies outside the range (open_clip
    instead clamps the parameter in place after each optimiser step).

    One module can serve several modality pairs with one shared temperature, as the paper shares one
    across CXR-ECG and CXR-labs::

        infonce = GlobalInfoNCE()
        loss = 0.5 * (infonce(cxr, ecg) + infonce(cxr, labs))

    Label smoothing follows ``F.cross_entropy(label_smoothing=eps)``: ``eps`` is spread over all
    ``N = world_size * B`` global columns, so the amount each negative receives (``eps / N``)
    depends on the world size. This keeps the multi-rank loss identical to the single-process loss
    on the same global batch, but changing the number of ranks at a fixed per-rank batch changes it.

    Every call synchronises with the host once (and runs one small all-gather of sizes and
    finiteness flags when distributed), so that unequal per-rank batches and non-finite inputs raise
    the same ``ValueError`` on every rank instead of hanging or returning NaN.

    Args:
        temperature: initial temperature; ``1 / temperature`` must lie in [1, max_logit_scale].
            Defaults to 0.07.
        learnable_temperature: make ``logit_scale`` an ``nn.Parameter`` (else a buffer). Defaults to True.
        max_logit_scale: upper clamp of the scale, at least 1. Defaults to 100.0.
        label_smoothing: cross-entropy label smoothing in [0, 1). Defaults to 0.02.
        normalize: L2-normalise the inputs first. Defaults to True.

    Raises:
        ValueError: when ``temperature`` is not positive, ``max_logit_scale < 1``, ``1 / temperature``
            lies outside [1, max_logit_scale] (the initial scale would be silently clamped and, if
            learnable, receive no gradient), or ``label_smoothing`` is outside [0, 1).

    Example:
        >>> infonce = GlobalInfoNCE(temperature=0.07)
        >>> cxr, ecg = torch.randn(8, 256), torch.randn(8, 256)
        >>> loss = infonce(cxr, ecg)
        >>> loss.shape, round(infonce.logit_scale_value, 3)
        (torch.Size([]), 14.286)
    """

    logit_scale: torch.Tensor

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_temperature: bool = True,
        max_logit_scale: float = 100.0,
        label_smoothing: float = 0.02,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite positive number, got {temperature}")
        if not (math.isfinite(max_logit_scale) and max_logit_scale >= 1.0):
            raise ValueError(f"max_logit_scale must be finite and >= 1, got {max_logit_scale}")
        if not 1.0 <= 1.0 / temperature <= max_logit_scale:
            raise ValueError(
                f"1 / temperature must lie in [1, max_logit_scale={max_logit_scale}], got temperature={temperature} "
                f"(scale {1.0 / temperature:.6g}); raise max_logit_scale or change temperature"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.temperature = float(temperature)
        self.learnable_temperature = bool(learnable_temperature)
        self.max_logit_scale = float(max_logit_scale)
        self.label_smoothing = float(label_smoothing)
        self.normalize = bool(normalize)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    def clamped_scale(self) -> torch.Tensor:
        """The scale used in ``forward``: ``exp(logit_scale)`` clamped to [1, max_logit_scale] (0-dim, with grad)."""
        return self.logit_scale.exp().clamp(1.0, self.max_logit_scale)

    @property
    def logit_scale_value(self) -> float:
        """The clamped scale as a Python float (for logging)."""
        return float(self.clamped_scale().detach())

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, return_diagnostics: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric global InfoNCE between two (B, D) batches.

        Args:
            a: (B, D) embeddings of the first modality (local rows of this rank).
            b: (B, D) embeddings of the second modality, row i paired with ``a[i]``.
            return_diagnostics: also return detached 0-dim tensors computed from the same logits
                (no extra matmul): ``top1_a_to_b`` and ``top1_b_to_a`` (top-1 retrieval accuracy of
                the local rows among the N global candidates), ``scale`` (the clamped scale in use),
                ``infonce`` (the unsmoothed symmetric InfoNCE of the local rows) and
                ``mi_lower_bound`` (``log(N) - infonce``, the InfoNCE lower bound on mutual
                information, in nats; with label smoothing it uses the unsmoothed loss, the only
                one for which the bound holds). Defaults to False.

        Returns:
            The scalar loss, or ``(loss, diagnostics)``.

        Raises:
            ValueError: see :func:`global_infonce`.
        """
        return global_infonce(
            a,
            b,
            self.clamped_scale(),
            label_smoothing=self.label_smoothing,
            normalize=self.normalize,
            return_diagnostics=return_diagnostics,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, learnable_temperature={self.learnable_temperature}, "
            f"max_logit_scale={self.max_logit_scale}, label_smoothing={self.label_smoothing}, "
            f"normalize={self.normalize}"
        )
