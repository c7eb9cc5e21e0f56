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
# Upper bound on the elements of any temporary the loss allocates besides the logits and their gradient
# (64 MiB in float32), so it needs about one logits matrix in forward and two in backward, whatever the batch.
_CHUNK_ELEMENTS = 2**24


def _logsumexp_rows(logits: torch.Tensor, offset: int) -> torch.Tensor:
    """Row-wise ``logsumexp`` through one ``log_softmax`` per block of rows.

    ``log_softmax`` is one fused kernel where ``torch.logsumexp`` launches about seven, and
    ``lse = z - log_softmax(z)`` holds at every entry. The positive entry (row ``i``, column
    ``offset + i``) is used: the largest logit of a trained model, so the subtraction loses the
    least. Row blocks keep the temporary under ``_CHUNK_ELEMENTS``.
    """
    rows, cols = logits.shape
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    out = logits.new_empty(rows)
    for start in range(0, rows, step):
        block = logits[start : start + step]
        log_p = torch.log_softmax(block, dim=1)
        torch.sub(block.diagonal(offset + start), log_p.diagonal(offset + start), out=out[start : start + len(block)])
    return out


def _logsumexp_cols(logits: torch.Tensor) -> torch.Tensor:
    """Column-wise ``logsumexp``, accumulated over blocks of rows (``log_softmax`` along dim 0 is
    3x slower on CPU than this, because it reads the row-major matrix across rows)."""
    rows, cols = logits.shape
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    # Shifting by the column maximum keeps exp() <= 1 and the sum >= 1: no overflow, no log(0).
    col_max = logits.amax(dim=0)
    col_sum = None
    for start in range(0, rows, step):
        part = (logits[start : start + step] - col_max).exp_().sum(dim=0)
        col_sum = part if col_sum is None else col_sum.add_(part)
    return col_sum.log_().add_(col_max)


class _InfoNCELogits(torch.autograd.Function):
    """Smoothed cross-entropy of ``s * q @ k.T`` whose positive of row ``i`` is column ``offset + i``.

    ``symmetric=True`` (one process, ``k`` paired row by row with ``q``) averages the row and column
    directions of the same matrix, so one matmul serves both. Forward keeps only the logits and the
    logsumexp vectors for backward; backward writes the whole logits gradient, softmax minus target,
    into one buffer and returns the three input gradients with two matmuls. One node with a
    hand-written backward launches far fewer kernels than the same loss through autograd, which
    matters when the loss is launch bound (small batches on a GPU). First-order gradients only.

    Returns ``(loss, infonce, logits)``: the smoothed loss (differentiable), the unsmoothed InfoNCE and
    the logits (both for diagnostics, not differentiable).
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        scale: torch.Tensor,
        offset: int,
        label_smoothing: float,
        symmetric: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, cols = q.shape[0], k.shape[0]
        logits = torch.mm(q, k.T).mul_(scale)
        lse_rows = _logsumexp_rows(logits, offset)
        lse_cols = _logsumexp_cols(logits) if symmetric else logits.new_empty(0)
        weight = 0.5 if symmetric else 1.0
        lse_sum = lse_rows.sum() + lse_cols.sum() if symmetric else lse_rows.sum()
        positive_sum = logits.diagonal(offset).sum()
        # CE with targets (1 - eps) * one_hot + eps / N, per row: lse - z_pos + eps * (z_pos - mean_j z_j).
        infonce = torch.sub(lse_sum, positive_sum, alpha=1.0 / weight).mul_(weight / rows)
        if label_smoothing > 0:
            smoothing = torch.sub(positive_sum, logits.sum(), alpha=1.0 / cols)
            loss = torch.add(infonce, smoothing, alpha=label_smoothing / rows)
        else:
            loss = infonce.clone()  # a distinct tensor: infonce is marked non-differentiable below
        ctx.offset, ctx.label_smoothing, ctx.symmetric = offset, label_smoothing, symmetric
        ctx.save_for_backward(q, k, scale, logits, lse_rows, lse_cols)
        ctx.mark_non_differentiable(infonce, logits)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the two non-differentiable outputs
        return loss, infonce, logits

    @staticmethod
    @once_differentiable
    def backward(  # noqa: D102
        ctx: FunctionCtx, grad_loss: torch.Tensor, _grad_infonce: torch.Tensor, _grad_logits: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        if grad_loss is None:  # the loss took no part in what was differentiated
            return None, None, None, None, None, None
        q, k, scale, logits, lse_rows, lse_cols = ctx.saved_tensors
        rows, cols = logits.shape
        weight = 0.5 if ctx.symmetric else 1.0
        eps = ctx.label_smoothing
        step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
        # grad = (weight / rows) * (softmax_rows [+ softmax_cols] - target / weight), the target's
        # constant factors applied last on the (B, D) results rather than on the (B, N) matrix.
        grad = torch.empty_like(logits)
        for start in range(0, rows, step):
            block = logits[start : start + step]
            out = grad[start : start + step]
            torch.sub(block, lse_rows[start : start + step, None], out=out).exp_()
            if ctx.symmetric:
                out.add_((block - lse_cols).exp_())
        grad.diagonal(ctx.offset).sub_((1.0 - eps) / weight)
        if eps > 0:
            grad.sub_(eps / (weight * cols))
        coef = grad_loss * (weight / rows)
        grad_q_unscaled = grad @ k  # (B, D); s * grad_q_unscaled is dL/dq, and <q, it> is dL/ds
        grad_q = grad_q_unscaled * (coef * scale) if ctx.needs_input_grad[0] else None
        grad_k = (grad.T @ q).mul_(coef * scale) if ctx.needs_input_grad[1] else None
        grad_scale = (q * grad_q_unscaled).sum().mul_(coef) if ctx.needs_input_grad[2] else None
        return grad_q, grad_k, grad_scale, None, None, None


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


def _status_per_rank(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, world_size: int, check_finite: bool
) -> list[list[int]]:
    """[batch, dim(, a non-finite, b non-finite, scale invalid)] for every rank, with one host sync.

    The finiteness flags travel with the sizes so that every rank sees every rank's problem and
    raises the same error together, instead of one rank raising while the others hang in the gather.
    """
    with torch.no_grad():
        status = torch.tensor(a.shape, device=a.device, dtype=torch.int64)
        if check_finite:
            flags = torch.stack(
                [~torch.isfinite(a).all(), ~torch.isfinite(b).all(), ~(torch.isfinite(scale) & (scale > 0))]
            )
            status = torch.cat([status, flags.to(torch.int64)])
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
        bad = [rank for rank, row in enumerate(status) if row[col:col + 1] == [1]]
        if bad:
            where = f" on rank(s) {bad}" if len(status) > 1 else ""
            raise ValueError(f"{name} must contain only finite values, got NaN or Inf{where}")
    if any(row[4:5] == [1] for row in status):
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
    check_finite: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric InfoNCE of local embeddings against the embeddings of every rank.

    With ``N`` rows in the global batch (all ranks together) and this rank's rows at offset
    ``rank * B``, returns ``0.5 * (CE(s * a @ b_global.T) + CE(s * b @ a_global.T))`` averaged over
    the local rows, with targets ``arange(B) + rank * B``. Cross-entropy with label smoothing
    ``eps`` is the one of ``F.cross_entropy(..., label_smoothing=eps)``: the target puts
    ``1 - eps + eps / N`` on the positive and ``eps / N`` on every other global column. It is
    evaluated as ``logsumexp(z) - (1 - eps) * z_pos - eps * mean(z)`` in one autograd node with a
    hand-written backward: one logits matrix per direction (one in all in a single process) is kept
    for backward instead of one log-softmax output per direction. The loss supports first-order
    gradients only (no double backward).

    Logits are computed in at least float32 with autocast disabled, whatever the input dtype.

    Input values are never read on the host unless ``check_finite=True`` (see
    :class:`GlobalInfoNCE` for what a bad value does in either case).

    Args:
        a: (B, D) embeddings of the first modality on this rank.
        b: (B, D) embeddings of the second modality, row i paired with ``a[i]``.
        scale: multiplier of the cosine similarities (``1 / temperature``), a float or a 0-dim
            tensor (gradients flow into it).
        label_smoothing: cross-entropy label smoothing in [0, 1). Defaults to 0.0.
        normalize: L2-normalise ``a`` and ``b`` first. Defaults to True.
        return_diagnostics: also return a dict of detached diagnostics (see
            :meth:`GlobalInfoNCE.forward`). Defaults to False.
        check_finite: raise ``ValueError`` for NaN/Inf in ``a`` or ``b`` (on any rank) or a
            non-finite or non-positive tensor ``scale``, at the cost of one host sync per call. When
            False, such values give a NaN/Inf loss instead. Defaults to False.

    Returns:
        The scalar loss of this rank (the mean over ranks is the loss of the whole global batch),
        or ``(loss, diagnostics)``.

    Raises:
        ValueError: when ``a`` or ``b`` is not 2-D, their shapes differ, the per-rank (batch, dim)
            differ, the global batch has fewer than 2 rows, a float ``scale`` is not finite and
            positive, ``label_smoothing`` is outside [0, 1), or (``check_finite=True`` only) ``a``,
            ``b`` or a tensor ``scale`` hold a bad value.

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
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and positive, got {scale}")
        # A fill on the device: torch.tensor(scale, device=...) would be a blocking host-to-device copy.
        scale = torch.full((), float(scale), device=a.device)
    return _infonce(a, b, scale, label_smoothing, normalize, return_diagnostics, check_finite, scale_checked=False)


def _infonce(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    label_smoothing: float,
    normalize: bool,
    return_diagnostics: bool,
    check_finite: bool,
    scale_checked: bool,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`global_infonce` after the host-side checks; ``scale_checked``: ``scale`` is known to be
    positive or NaN (the module's clamp), so a non-positive value needs no on-device guard."""
    world_size = get_world_size() if is_distributed() else 1
    rank = get_rank() if world_size > 1 else 0
    batch, dim = a.shape
    if world_size > 1 or check_finite:
        # Ranks must agree on the sizes before the gather: one small all-gather and one host read.
        status = _status_per_rank(a.detach(), b.detach(), scale.detach(), world_size, check_finite)
        num_global = _raise_on_bad_status(status)
    else:
        num_global = _raise_on_bad_status([[batch, dim]])

    # Low-precision logits at scale 100 lose the ranking between close negatives and overflow
    # exp() in fp16, so the whole loss runs in (at least) float32 even inside an autocast region.
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with torch.autocast(device_type=a.device.type, enabled=False):
        a = a.to(dtype)
        b = b.to(dtype)
        scale = scale.to(device=a.device, dtype=dtype)
        if not (check_finite or scale_checked):
            # A non-positive finite scale would give a finite, wrong loss: make it NaN on the device.
            scale = scale.masked_fill(scale <= 0, math.nan)
        if normalize:
            a = F.normalize(a, dim=1, eps=_NORM_EPS)
            b = F.normalize(b, dim=1, eps=_NORM_EPS)
        if world_size > 1:
            # One collective for both modalities; gradients of the gathered rows flow back to their ranks.
            gathered = all_gather_with_grad(torch.cat([a, b], dim=1))
            a_global, b_global = gathered[:, :dim], gathered[:, dim:]
            offset = rank * batch
            loss_ab, infonce_ab, logits_ab = _InfoNCELogits.apply(a, b_global, scale, offset, label_smoothing, False)
            loss_ba, infonce_ba, logits_ba = _InfoNCELogits.apply(b, a_global, scale, offset, label_smoothing, False)
            loss, infonce = 0.5 * (loss_ab + loss_ba), 0.5 * (infonce_ab + infonce_ba)
        else:
            # Single process: the b -> a logits are the transpose, so one matmul serves both directions.
            loss, infonce, logits_ab = _InfoNCELogits.apply(a, b, scale, 0, label_smoothing, True)
            logits_ba = logits_ab.T

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

    Host synchronisation and bad values. Shape, dtype and option errors are raised from host
    metadata on every call. Input VALUES are not read on the host by default
    (``check_finite=False``), so in one process a call never waits for the device: a NaN or Inf in
    ``a``, ``b`` or the scale makes the loss NaN or Inf (IEEE propagation through the positive
    logits, which the loss always contains; tested for NaN, +Inf and -Inf in one entry, in a row and
    against a zero), never a finite wrong value. pacx's ``Trainer`` checks the logged loss at every
    log step without a per-step sync and raises ``FloatingPointError`` then; under
    ``torch.distributed`` the gather carries the NaN into every rank's loss. ``check_finite=True``
    instead raises a ``ValueError`` naming the input (and the rank) at once, at the cost of one
    host sync per call: use it to debug a data pipeline. A device-side assert
    (``torch._assert_async``) was not used: on CUDA a failed one is not a ``ValueError`` and leaves
    the CUDA context unusable. Under ``torch.distributed`` every call also runs one small all-gather
    of the per-rank (batch, dim) and reads it on the host (with the finiteness flags when
    ``check_finite``), so that unequal per-rank batches raise the same ``ValueError`` on every rank
    instead of hanging in the gather.

    Args:
        temperature: initial temperature; ``1 / temperature`` must lie in [1, max_logit_scale].
            Defaults to 0.07.
        learnable_temperature: make ``logit_scale`` an ``nn.Parameter`` (else a buffer). Defaults to True.
        max_logit_scale: upper clamp of the scale, at least 1. Defaults to 100.0.
        label_smoothing: cross-entropy label smoothing in [0, 1). Defaults to 0.02.
        normalize: L2-normalise the inputs first. Defaults to True.
        check_finite: read the inputs' finiteness on the host and raise ``ValueError`` for NaN/Inf
            (one host sync per call). Defaults to False: bad values give a NaN/Inf loss instead.

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
        check_finite: bool = False,
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
        self.check_finite = bool(check_finite)
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
        _check_pair(a, b)
        scale = self.clamped_scale().to(a.device)  # positive or NaN: no on-device guard needed
        return _infonce(
            a, b, scale, self.label_smoothing, self.normalize, return_diagnostics, self.check_finite, scale_checked=True
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, learnable_temperature={self.learnable_temperature}, "
            f"max_logit_scale={self.max_logit_scale}, label_smoothing={self.label_smoothing}, "
            f"normalize={self.normalize}, check_finite={self.check_finite}"
        )
