"""Net1D: the 1-D CNN behind ECGFounder, with a state dict that matches the published checkpoint.

Net1D is a RegNet/ResNeXt-style stack of pre-activation bottleneck blocks (1x1 conv, grouped
k-conv, 1x1 conv) with squeeze-and-excitation and a max-pool / zero-channel-pad shortcut. Every
convolution and the shortcut max-pool use TensorFlow-style "SAME" padding, so a stride-``s``
layer maps length ``L`` to ``ceil(L / s)``: 5000 samples become 2500 after the stem and 20
after the seventh stage of the ECGFounder configuration.

BatchNorm and Dropout modules are created whatever ``use_bn`` / ``use_do`` say, because the
published ECGFounder checkpoint (trained with both switched off) still carries their tensors;
the switches only decide whether ``forward`` applies them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pacx.io import load_state_dict_file

__all__ = [
    "Net1D",
    "ecgfounder_12lead",
    "load_ecgfounder_checkpoint",
    "net1d_small",
    "same_padding_1d",
]

# The ECGFounder 12-lead configuration (finetune_model.py / ptbxl_eval.py of the public repo).
ECGFOUNDER_12LEAD_CONFIG: dict[str, Any] = {
    "in_channels": 12,
    "base_filters": 64,
    "ratio": 1.0,
    "filter_list": [64, 160, 160, 400, 400, 1024, 1024],
    "m_blocks_list": [2, 2, 2, 3, 3, 4, 4],
    "kernel_size": 16,
    "stride": 2,
    "groups_width": 16,
    "use_bn": False,
    "use_do": False,
}

DROPOUT_P = 0.5


def same_padding_1d(length: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Left and right zero padding that makes a strided 1-D window output ``ceil(length / stride)``.

    Args:
        length: input length (>= 1).
        kernel_size: window size (>= 1).
        stride: window step (>= 1).

    Returns:
        ``(left, right)`` with ``left = total // 2`` and ``total = max(0, (out - 1) * stride + kernel_size - length)``.

    Raises:
        ValueError: when an argument is not positive.

    Example:
        >>> same_padding_1d(5000, 16, 2)
        (7, 7)
    """
    if length < 1 or kernel_size < 1 or stride < 1:
        raise ValueError(
            f"same_padding_1d expects positive length, kernel_size and stride, got "
            f"length={length}, kernel_size={kernel_size}, stride={stride}"
        )
    out = (length + stride - 1) // stride
    total = max(0, (out - 1) * stride + kernel_size - length)
    left = total // 2
    return left, total - left


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class _ConvSame(nn.Module):
    """Conv1d (with bias) after SAME zero padding; the layer is ``.conv`` so keys read ``*.conv.weight``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = same_padding_1d(x.shape[-1], self.kernel_size, self.stride)
        return self.conv(F.pad(x, (left, right), mode="constant", value=0.0))


class _MaxPoolSame(nn.Module):
    """Max-pool (kernel = stride = ``size``) after padding ``size - 1`` zeros, as on ECGFounder's shortcut.

    The pad value is zero, not -inf: on odd lengths the last pooled value is ``max(x_last, 0)``.
    That is what the reference network computes, so it is kept for numerical fidelity.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.size - 1
        left = total // 2
        x = F.pad(x, (left, total - left), mode="constant", value=0.0)
        return F.max_pool1d(x, kernel_size=self.size, stride=self.size)


class _BasicBlock(nn.Module):
    """Pre-activation bottleneck block with squeeze-and-excitation and a pooled / channel-padded shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ratio: float,
        kernel_size: int,
        stride: int,
        groups: int,
        downsample: bool,
        is_first_block: bool,
        use_bn: bool,
        use_do: bool,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mid_channels = int(out_channels * ratio)
        self.downsample = downsample
        self.is_first_block = is_first_block
        self.use_bn = use_bn
        self.use_do = use_do
        block_stride = stride if downsample else 1

        # Attribute names (and their creation order) fix the state-dict keys of the checkpoint.
        self.bn1 = nn.BatchNorm1d(in_channels)
        self.do1 = nn.Dropout(DROPOUT_P)
        self.conv1 = _ConvSame(in_channels, self.mid_channels, kernel_size=1, stride=1)
        self.bn2 = nn.BatchNorm1d(self.mid_channels)
        self.do2 = nn.Dropout(DROPOUT_P)
        self.conv2 = _ConvSame(self.mid_channels, self.mid_channels, kernel_size, stride=block_stride, groups=groups)
        self.bn3 = nn.BatchNorm1d(self.mid_channels)
        self.do3 = nn.Dropout(DROPOUT_P)
        self.conv3 = _ConvSame(self.mid_channels, out_channels, kernel_size=1, stride=1)
        self.se_fc1 = nn.Linear(out_channels, out_channels // 2)
        self.se_fc2 = nn.Linear(out_channels // 2, out_channels)
        self.max_pool = _MaxPoolSame(stride)

    def _pre(self, x: torch.Tensor, bn: nn.BatchNorm1d, do: nn.Dropout) -> torch.Tensor:
        if self.use_bn:
            x = bn(x)
        x = _swish(x)
        if self.use_do:
            x = do(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = x
        # The stem already ended in an activation, so the very first block skips its pre-activation.
        if not self.is_first_block:
            out = self._pre(out, self.bn1, self.do1)
        out = self.conv1(out)
        out = self._pre(out, self.bn2, self.do2)
        out = self.conv2(out)
        out = self._pre(out, self.bn3, self.do3)
        out = self.conv3(out)

        scale = self.se_fc1(out.mean(dim=-1))
        scale = torch.sigmoid(self.se_fc2(_swish(scale)))
        out = out * scale.unsqueeze(-1)

        if self.downsample:
            identity = self.max_pool(identity)
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            before = extra // 2
            # Pad the channel axis (dim 1): F.pad reads pairs from the last dim backwards.
            identity = F.pad(identity, (0, 0, before, extra - before), mode="constant", value=0.0)
        return out + identity


class _BasicStage(nn.Module):
    """A run of blocks of one width; the first block downsamples and changes the width.

    ``block_args`` (``ratio``, ``kernel_size``, ``stride``, ``groups``, ``use_bn``, ``use_do``)
    go unchanged to every :class:`_BasicBlock`.
    """

    def __init__(
        self, stage_index: int, in_channels: int, out_channels: int, num_blocks: int, **block_args: Any
    ) -> None:
        super().__init__()
        self.block_list = nn.ModuleList(
            _BasicBlock(
                in_channels=in_channels if b == 0 else out_channels,
                out_channels=out_channels,
                downsample=b == 0,
                is_first_block=stage_index == 0 and b == 0,
                **block_args,
            )
            for b in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block_list:
            x = block(x)
        return x


def _check_net1d_args(args: dict[str, Any]) -> None:
    """Check :class:`Net1D`'s arguments, given by name (the two lists already converted to int lists)."""
    for arg in ("in_channels", "base_filters", "kernel_size", "stride", "groups_width"):
        if not isinstance(args[arg], int) or args[arg] < 1:
            raise ValueError(f"Net1D: {arg} must be a positive int, got {args[arg]!r}")
    n_classes, ratio, groups_width = args["n_classes"], args["ratio"], args["groups_width"]
    filter_list, m_blocks_list = args["filter_list"], args["m_blocks_list"]
    if not isinstance(n_classes, int) or n_classes < 0:
        raise ValueError(f"Net1D: n_classes must be an int >= 0 (0 = no head), got {n_classes!r}")
    if not ratio > 0:
        raise ValueError(f"Net1D: ratio must be > 0, got {ratio!r}")
    if len(filter_list) == 0 or len(filter_list) != len(m_blocks_list):
        raise ValueError(
            "Net1D: filter_list and m_blocks_list must be non-empty and of equal length, got "
            f"{len(filter_list)} and {len(m_blocks_list)}"
        )
    if any(m < 1 for m in m_blocks_list):
        raise ValueError(f"Net1D: every entry of m_blocks_list must be >= 1, got {m_blocks_list}")
    for s, width in enumerate(filter_list):
        mid = int(width * ratio)
        if width < 2 or width % 2 != 0:
            raise ValueError(
                f"Net1D: filter_list[{s}] must be an even width >= 2 (squeeze-excitation halves it), got {width}"
            )
        if mid < groups_width or mid % groups_width != 0:
            raise ValueError(
                f"Net1D: bottleneck width int(filter_list[{s}] * ratio) = {mid} must be a positive "
                f"multiple of groups_width={groups_width}"
            )


class Net1D(nn.Module):
    """ECGFounder's Net1D: stem, seven stages of SE bottleneck blocks, temporal mean, linear head.

    Module names reproduce the published checkpoint's keys exactly (``first_conv.conv.weight``,
    ``first_bn.*``, ``stage_list.{s}.block_list.{b}.{bn1,conv1.conv,bn2,conv2.conv,bn3,conv3.conv,
    se_fc1,se_fc2}.*``, ``dense.*``), so :func:`load_ecgfounder_checkpoint` loads it strictly.

    Args:
        in_channels: number of leads.
        base_filters: width of the stem convolution (input width of stage 0).
        ratio: bottleneck width = ``int(out_channels * ratio)`` for every block.
        filter_list: output width of each stage.
        m_blocks_list: number of blocks in each stage (same length as ``filter_list``).
        kernel_size: kernel of the stem and of every grouped convolution.
        stride: stride of the stem and of the first block of every stage.
        groups_width: channels per group of the grouped convolution (groups = mid // groups_width).
        n_classes: size of the linear head ``dense``; 0 builds no head and ``forward`` returns features.
        use_bn: apply the BatchNorm layers in ``forward`` (they exist either way).
        use_do: apply the Dropout(p=0.5) layers in ``forward`` (they exist either way).

    Raises:
        ValueError: when a size is not positive, the lists differ in length, or a width is not
            divisible by ``groups_width`` (bottleneck) or by 2 (squeeze-excitation).

    Example:
        >>> net = Net1D(12, 16, 1.0, [16, 32], [1, 1], kernel_size=16, stride=2, groups_width=16, n_classes=5)
        >>> net(torch.randn(2, 12, 500)).shape
        torch.Size([2, 5])
        >>> net.forward_features(torch.randn(2, 12, 500)).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        in_channels: int,
        base_filters: int,
        ratio: float,
        filter_list: Sequence[int],
        m_blocks_list: Sequence[int],
        kernel_size: int,
        stride: int,
        groups_width: int,
        n_classes: int,
        use_bn: bool = True,
        use_do: bool = True,
    ) -> None:
        super().__init__()
        filter_list = [int(f) for f in filter_list]
        m_blocks_list = [int(m) for m in m_blocks_list]
        _check_net1d_args(
            {"in_channels": in_channels, "base_filters": base_filters, "ratio": ratio, "filter_list": filter_list,
             "m_blocks_list": m_blocks_list, "kernel_size": kernel_size, "stride": stride,
             "groups_width": groups_width, "n_classes": n_classes},
        )  # fmt: skip

        self.in_channels = in_channels
        self.base_filters = base_filters
        self.ratio = float(ratio)
        self.filter_list = filter_list
        self.m_blocks_list = m_blocks_list
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups_width = groups_width
        self.n_classes = n_classes
        self.use_bn = use_bn
        self.use_do = use_do
        self.num_features = filter_list[-1]

        self.first_conv = _ConvSame(in_channels, base_filters, kernel_size, stride=stride)
        self.first_bn = nn.BatchNorm1d(base_filters)
        widths_in = [base_filters] + filter_list[:-1]
        self.stage_list = nn.ModuleList(
            _BasicStage(
                s, widths_in[s], width, n_blocks, ratio=ratio, kernel_size=kernel_size, stride=stride,
                groups=int(width * ratio) // groups_width, use_bn=use_bn, use_do=use_do,
            )
            for s, (width, n_blocks) in enumerate(zip(filter_list, m_blocks_list))
        )  # fmt: skip
        self.dense: nn.Linear | None = nn.Linear(self.num_features, n_classes) if n_classes > 0 else None

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (``Net1D(**net.config())`` rebuilds it)."""
        return {
            "in_channels": self.in_channels,
            "base_filters": self.base_filters,
            "ratio": self.ratio,
            "filter_list": list(self.filter_list),
            "m_blocks_list": list(self.m_blocks_list),
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "groups_width": self.groups_width,
            "n_classes": self.n_classes,
            "use_bn": self.use_bn,
            "use_do": self.use_do,
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"Net1D: x must be a torch.Tensor of shape (B, {self.in_channels}, T), got {type(x).__name__}"
            )
        if x.ndim != 3 or x.shape[1] != self.in_channels or x.shape[0] < 1 or x.shape[2] < 1:
            raise ValueError(
                f"Net1D: x must have shape (B, {self.in_channels}, T) with B, T >= 1, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"Net1D: x must be a floating-point tensor, got dtype {x.dtype}")

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all stages: (B, in_channels, T) -> (B, filter_list[-1], T').

        ``T'`` applies ``ceil(. / stride)`` once for the stem and once per stage (20 for 5000 samples).
        """
        self._check_input(x)
        out = self.first_conv(x)
        if self.use_bn:
            out = self.first_bn(out)
        out = _swish(out)
        for stage in self.stage_list:
            out = stage(out)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding: the last stage's output averaged over time, (B, filter_list[-1]).

        This is the 1024-d ECGFounder teacher embedding (no norm or activation before pooling).
        """
        return self.forward_stages(x).mean(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes), or the pooled features (B, filter_list[-1]) when ``n_classes == 0``."""
        features = self.forward_features(x)
        if self.dense is None:
            return features
        return self.dense(features)

    @staticmethod
    def output_length(length: int, stride: int, num_stages: int) -> int:
        """Time steps after the stem and ``num_stages`` stages for an input of ``length`` samples."""
        for _ in range(num_stages + 1):
            length = math.ceil(length / stride)
        return length


def ecgfounder_12lead(n_classes: int = 150) -> Net1D:
    """Net1D with the published ECGFounder 12-lead configuration (use_bn=False, use_do=False).

    With the 150-class head it has 30,819,014 parameters (30,665,264 with ``n_classes=0``).
    Inputs are (B, 12, 5000): 10 s at 500 Hz, leads I, II, III, aVR, aVL, aVF, V1-V6, band-pass
    filtered and globally z-scored as ECGFounder's dataset code does (see ``pacx.data``).

    Args:
        n_classes: head size; 150 matches the checkpoint, 0 builds no head.

    Returns:
        A randomly initialised :class:`Net1D`; load weights with :func:`load_ecgfounder_checkpoint`.

    Example:
        >>> net = ecgfounder_12lead(n_classes=0)
        >>> net.num_features
        1024
    """
    return Net1D(n_classes=n_classes, **ECGFOUNDER_12LEAD_CONFIG)


def net1d_small(
    n_classes: int,
    in_channels: int = 12,
    kernel_size: int = 16,
    use_bn: bool = True,
    use_do: bool = False,
) -> Net1D:
    """A small Net1D (one block per stage, widths 16..128, about 0.25M parameters) for CPU training.

    It keeps the ECGFounder topology (seven stride-2 stages, SE bottlenecks, groups of 16
    channels) so code written for the big model runs unchanged, and trains a teacher on the
    synthetic cohort's ECG labels in minutes on two CPU cores. BatchNorm is on by default
    because a small net trained from scratch converges faster with it.

    Args:
        n_classes: head size (0 = no head).
        in_channels: number of leads.
        kernel_size: kernel of the stem and grouped convolutions.
        use_bn: apply BatchNorm.
        use_do: apply Dropout(0.5).

    Returns:
        A :class:`Net1D` whose ``forward_features`` gives (B, 128).

    Example:
        >>> net1d_small(n_classes=4)(torch.randn(2, 12, 1000)).shape
        torch.Size([2, 4])
    """
    return Net1D(
        in_channels=in_channels,
        base_filters=16,
        ratio=1.0,
        filter_list=[16, 32, 32, 64, 64, 128, 128],
        m_blocks_list=[1, 1, 1, 1, 1, 1, 1],
        kernel_size=kernel_size,
        stride=2,
        groups_width=16,
        n_classes=n_classes,
        use_bn=use_bn,
        use_do=use_do,
    )


def _format_keys(keys: Sequence[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_ecgfounder_checkpoint(
    model: Net1D,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    drop_head: bool = False,
) -> Net1D:
    """Load ECGFounder weights (``{'state_dict': {...}}`` or a bare state dict) into ``model``, strictly.

    The file is read with :func:`pacx.io.load_state_dict_file`: safetensors directly, other files
    with ``torch.load(weights_only=True)``, so a pickle that would run code is refused. A uniform
    ``module.`` prefix (DataParallel checkpoints) is removed. Every key must match in name and shape.

    Args:
        model: the target network, e.g. ``ecgfounder_12lead()`` or ``ecgfounder_12lead(n_classes=0)``.
        path_or_state_dict: a path to ``12_lead_ECGFounder.pth`` (or a converted ``.safetensors``),
            or an already loaded mapping.
        drop_head: ignore ``dense.*`` on both sides (checkpoint and model) so a differently sized
            head, or no head, can be used; the model's own head is left as initialised.

    Returns:
        ``model``, with the weights loaded in place.

    Raises:
        ValueError: on missing, unexpected or wrongly shaped keys (all listed), non-tensor values,
            or a checkpoint that is not a dict. ``pacx.io.UnsafeCheckpointError`` (a ValueError)
            when the file would execute code.
        FileNotFoundError: when the path does not exist.

    Example:
        >>> net = ecgfounder_12lead(n_classes=0)
        >>> load_ecgfounder_checkpoint(net, "checkpoint/12_lead_ECGFounder.pth", drop_head=True)  # doctest: +SKIP
    """
    if not isinstance(model, Net1D):
        raise ValueError(f"load_ecgfounder_checkpoint: model must be a Net1D, got {type(model).__name__}")
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = str(path_or_state_dict)
        raw: Any = load_state_dict_file(path_or_state_dict)
    elif isinstance(path_or_state_dict, Mapping):
        source = "state dict"
        raw = path_or_state_dict
    else:
        raise ValueError(
            "load_ecgfounder_checkpoint: path_or_state_dict must be a path or a mapping, got "
            f"{type(path_or_state_dict).__name__}"
        )
    state = raw["state_dict"] if "state_dict" in raw else raw
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: 'state_dict' must be a mapping of tensors, got {type(state).__name__}")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad_values = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        raise ValueError(f"{source}: expected tensors only, these keys hold other objects: {_format_keys(bad_values)}")

    expected = model.state_dict()
    if drop_head:
        state = {k: v for k, v in state.items() if not k.startswith("dense.")}
        expected = {k: v for k, v in expected.items() if not k.startswith("dense.")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_format_keys(mismatched)}")
        hint = ""
        if any(k.startswith("dense.") for k in missing + unexpected) or any(m.startswith("dense.") for m in mismatched):
            hint = " (pass drop_head=True to ignore the classification head)"
        raise ValueError(f"load_ecgfounder_checkpoint: {source} does not match the model: " + "; ".join(parts) + hint)
    model.load_state_dict(state, strict=not drop_head)
    return model
