"""Tests for pacx.nets.net1d: ECGFounder layout, SAME padding, forward semantics and the safe loader."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from pacx.io import UnsafeCheckpointError, save_safetensors
from pacx.nets import Net1D, ecgfounder_12lead, load_ecgfounder_checkpoint, net1d_small
from pacx.nets.net1d import same_padding_1d

ECG_FILTERS = [64, 160, 160, 400, 400, 1024, 1024]
ECG_BLOCKS = [2, 2, 2, 3, 3, 4, 4]
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_ecgfounder_shapes(n_classes: int = 150) -> dict[str, tuple[int, ...]]:
    """Key -> shape table of the published checkpoint, from the config arithmetic alone."""
    shapes: dict[str, tuple[int, ...]] = {}

    def add_bn(prefix: str, channels: int) -> None:
        for name in BN_TENSORS:
            shapes[f"{prefix}.{name}"] = () if name == "num_batches_tracked" else (channels,)

    shapes["first_conv.conv.weight"] = (64, 12, 16)
    shapes["first_conv.conv.bias"] = (64,)
    add_bn("first_bn", 64)
    previous = 64
    for s, (c_out, n_blocks) in enumerate(zip(ECG_FILTERS, ECG_BLOCKS)):
        for b in range(n_blocks):
            c_in = previous if b == 0 else c_out
            p = f"stage_list.{s}.block_list.{b}"
            add_bn(f"{p}.bn1", c_in)
            shapes[f"{p}.conv1.conv.weight"] = (c_out, c_in, 1)
            shapes[f"{p}.conv1.conv.bias"] = (c_out,)
            add_bn(f"{p}.bn2", c_out)
            shapes[f"{p}.conv2.conv.weight"] = (c_out, 16, 16)
            shapes[f"{p}.conv2.conv.bias"] = (c_out,)
            add_bn(f"{p}.bn3", c_out)
            shapes[f"{p}.conv3.conv.weight"] = (c_out, c_out, 1)
            shapes[f"{p}.conv3.conv.bias"] = (c_out,)
            shapes[f"{p}.se_fc1.weight"] = (c_out // 2, c_out)
            shapes[f"{p}.se_fc1.bias"] = (c_out // 2,)
            shapes[f"{p}.se_fc2.weight"] = (c_out, c_out // 2)
            shapes[f"{p}.se_fc2.bias"] = (c_out,)
        previous = c_out
    if n_classes:
        shapes["dense.weight"] = (n_classes, 1024)
        shapes["dense.bias"] = (n_classes,)
    return shapes


def _param_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(
        math.prod(shape)
        for key, shape in shapes.items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )


@pytest.fixture(scope="module")
def ecgfounder() -> Net1D:
    torch.manual_seed(0)
    return ecgfounder_12lead().eval()


# ---------------------------------------------------------------- ECGFounder layout


def test_ecgfounder_state_dict_matches_published_layout(ecgfounder: Net1D) -> None:
    expected = expected_ecgfounder_shapes(150)
    actual = {k: tuple(v.shape) for k, v in ecgfounder.state_dict().items()}
    assert set(actual) == set(expected), (set(actual) ^ set(expected))
    assert actual == expected
    assert _param_count(expected) == 30_819_014
    assert sum(p.numel() for p in ecgfounder.parameters()) == 30_819_014
    groups = [stage.block_list[0].conv2.conv.groups for stage in ecgfounder.stage_list]
    assert groups == [4, 10, 10, 25, 25, 64, 64]
    assert not ecgfounder.use_bn and not ecgfounder.use_do


def test_ecgfounder_without_head() -> None:
    net = ecgfounder_12lead(n_classes=0)
    expected = expected_ecgfounder_shapes(0)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    assert sum(p.numel() for p in net.parameters()) == 30_665_264 == _param_count(expected)
    assert net.dense is None and net.num_features == 1024


def test_ecgfounder_forward_lengths_and_features(ecgfounder: Net1D) -> None:
    lengths: list[int] = []
    hooks = [ecgfounder.first_conv.register_forward_hook(lambda m, i, o: lengths.append(o.shape[-1]))]
    last: dict[str, torch.Tensor] = {}
    for s, stage in enumerate(ecgfounder.stage_list):

        def hook(module, inputs, output, s=s):
            lengths.append(output.shape[-1])
            if s == len(ecgfounder.stage_list) - 1:
                last["out"] = output

        hooks.append(stage.register_forward_hook(hook))
    x = torch.linspace(-1, 1, 60000).reshape(1, 12, 5000)
    with torch.no_grad():
        logits = ecgfounder(x)
    for h in hooks:
        h.remove()
    assert lengths == [2500, 1250, 625, 313, 157, 79, 40, 20]
    assert last["out"].shape == (1, 1024, 20)
    features = last["out"].mean(dim=-1)
    assert logits.shape == (1, 150)
    torch.testing.assert_close(logits, ecgfounder.dense(features))
    with torch.no_grad():
        torch.testing.assert_close(ecgfounder.forward_features(x), features)
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- SAME padding


@pytest.mark.parametrize(
    "length, kernel, stride, expected",
    [
        (5000, 16, 2, (7, 7)),
        (2500, 16, 2, (7, 7)),
        (625, 16, 2, (7, 8)),
        (3, 16, 2, (7, 8)),
        (10, 1, 1, (0, 0)),
        (157, 1, 1, (0, 0)),
        (20, 16, 1, (7, 8)),
        (7, 2, 3, (0, 1)),
    ],
)
def test_same_padding_lengths(length: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding_1d(length, kernel, stride) == expected
    left, right = expected
    out = (length + left + right - kernel) // stride + 1
    assert out == math.ceil(length / stride)


def test_same_padding_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="stride"):
        same_padding_1d(10, 3, 0)


@pytest.mark.parametrize("length", [1, 2, 37, 1000, 1001])
def test_small_net_output_length_is_ceil_chain(length: int) -> None:
    net = net1d_small(n_classes=3, in_channels=2, kernel_size=5).eval()
    with torch.no_grad():
        out = net.forward_stages(torch.randn(2, 2, length))
    expected = length
    for _ in range(8):
        expected = math.ceil(expected / 2)
    assert out.shape == (2, 128, expected) == (2, 128, Net1D.output_length(length, 2, 7))


# ---------------------------------------------------------------- forward semantics vs a functional reference


def _ref_conv(x, weight, bias, stride, groups):
    length, k = x.shape[-1], weight.shape[-1]
    out = -(-length // stride)
    total = max(0, (out - 1) * stride + k - length)
    return F.conv1d(F.pad(x, (total // 2, total - total // 2)), weight, bias, stride=stride, groups=groups)


def _reference_forward(net: Net1D, x: torch.Tensor) -> torch.Tensor:
    """Net1D forward written from the specification with functional ops and the state dict."""
    sd = net.state_dict()
    cfg = net.config()

    def swish(t):
        return t * torch.sigmoid(t)

    def bn(t, p):
        if not cfg["use_bn"]:
            return t
        return F.batch_norm(
            t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
        )

    stride = cfg["stride"]
    h = _ref_conv(x, sd["first_conv.conv.weight"], sd["first_conv.conv.bias"], stride, 1)
    h = swish(bn(h, "first_bn"))
    c_prev = cfg["base_filters"]
    for s, (c_out, n_blocks) in enumerate(zip(cfg["filter_list"], cfg["m_blocks_list"])):
        mid = int(c_out * cfg["ratio"])
        for b in range(n_blocks):
            p = f"stage_list.{s}.block_list.{b}."
            o = h
            if not (s == 0 and b == 0):
                o = swish(bn(o, p + "bn1"))
            o = _ref_conv(o, sd[p + "conv1.conv.weight"], sd[p + "conv1.conv.bias"], 1, 1)
            o = swish(bn(o, p + "bn2"))
            groups = mid // cfg["groups_width"]
            o = _ref_conv(o, sd[p + "conv2.conv.weight"], sd[p + "conv2.conv.bias"], stride if b == 0 else 1, groups)
            o = swish(bn(o, p + "bn3"))
            o = _ref_conv(o, sd[p + "conv3.conv.weight"], sd[p + "conv3.conv.bias"], 1, 1)
            se = swish(F.linear(o.mean(-1), sd[p + "se_fc1.weight"], sd[p + "se_fc1.bias"]))
            se = torch.sigmoid(F.linear(se, sd[p + "se_fc2.weight"], sd[p + "se_fc2.bias"]))
            o = o * se[:, :, None]
            identity = h
            if b == 0:
                pad = stride - 1
                identity = F.max_pool1d(F.pad(identity, (pad // 2, pad - pad // 2)), stride, stride)
            c_in = identity.shape[1]
            if c_in != c_out:
                before = (c_out - c_in) // 2
                zeros = identity.new_zeros
                identity = torch.cat(
                    [
                        zeros(identity.shape[0], before, identity.shape[2]),
                        identity,
                        zeros(identity.shape[0], c_out - c_in - before, identity.shape[2]),
                    ],
                    dim=1,
                )
            h = o + identity
        c_prev = c_out
    assert c_prev == cfg["filter_list"][-1]
    return F.linear(h.mean(-1), sd["dense.weight"], sd["dense.bias"])


def _randomise_bn(net: Net1D, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


@pytest.mark.parametrize("use_bn", [True, False])
@pytest.mark.parametrize("stride, ratio, length", [(2, 1.0, 37), (3, 0.5, 50)])
def test_forward_matches_functional_reference(use_bn: bool, stride: int, ratio: float, length: int) -> None:
    torch.manual_seed(1)
    net = Net1D(3, 16, ratio, [32, 32, 64], [2, 1, 2], kernel_size=5, stride=stride, groups_width=16,
                n_classes=4, use_bn=use_bn, use_do=True)
    _randomise_bn(net, seed=2)
    net.eval()
    x = torch.randn(2, 3, length)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _reference_forward(net, x), rtol=1e-4, atol=1e-5)


def test_bn_and_dropout_switches() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 12, 300)
    off = net1d_small(n_classes=3, use_bn=False, use_do=False)
    with torch.no_grad():
        before = off(x)
        _randomise_bn(off, seed=5)
        off.train()  # neither BN nor dropout may run: train mode must not change anything
        after = off(x)
    torch.testing.assert_close(before, after)
    assert all(m.num_batches_tracked.item() == 0 for m in off.modules() if isinstance(m, torch.nn.BatchNorm1d))

    on = net1d_small(n_classes=3, use_bn=False, use_do=True).train()
    with torch.no_grad():
        assert not torch.allclose(on(x), on(x))  # dropout active in training
        on.eval()
        torch.testing.assert_close(on(x), on(x))


def test_max_pool_pads_with_zeros_and_channels_centred() -> None:
    """A block whose residual branch is zeroed passes the pooled, centre-padded identity through."""
    net = Net1D(2, 16, 1.0, [16, 48], [1, 1], kernel_size=3, stride=2, groups_width=16, n_classes=0, use_bn=False,
                use_do=False)
    block = net.stage_list[1].block_list[0]
    with torch.no_grad():
        block.conv3.conv.weight.zero_()
        block.conv3.conv.bias.zero_()
        x = -torch.rand(1, 16, 5) - 0.1  # strictly negative, odd length
        out = block(x)
    assert out.shape == (1, 48, 3)
    assert torch.all(out[:, :16] == 0) and torch.all(out[:, 32:] == 0)
    pooled = out[:, 16:32]
    torch.testing.assert_close(pooled[..., :2], torch.maximum(x[..., 0:4:2], x[..., 1:4:2]))
    # The last window is (x_4, zero pad): max with a zero pad value is 0 for negative inputs.
    assert torch.all(pooled[..., 2] == 0)


def test_n_classes_zero_returns_features() -> None:
    net = net1d_small(n_classes=0).eval()
    assert not any(k.startswith("dense.") for k in net.state_dict())
    x = torch.randn(3, 12, 200)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.forward_features(x))
    assert net(x).shape == (3, 128)


def test_config_round_trip() -> None:
    net = net1d_small(n_classes=5, in_channels=1)
    clone = Net1D(**net.config())
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_small_net_trains() -> None:
    torch.manual_seed(0)
    net = net1d_small(n_classes=1, in_channels=1, kernel_size=5)
    x = torch.randn(16, 1, 64)
    y = (x[:, 0, :32].mean(dim=1) > x[:, 0, 32:].mean(dim=1)).float()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = F.binary_cross_entropy_with_logits(net(x).squeeze(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filter_list": [16, 32], "m_blocks_list": [1]}, "equal length"),
        ({"filter_list": [], "m_blocks_list": []}, "non-empty"),
        ({"filter_list": [16, 40], "m_blocks_list": [1, 1]}, "groups_width"),
        ({"filter_list": [16, 17], "m_blocks_list": [1, 1], "groups_width": 1}, "even"),
        ({"m_blocks_list": [1, 0]}, "m_blocks_list"),
        ({"n_classes": -1}, "n_classes"),
        ({"stride": 0}, "stride"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"in_channels": 0}, "in_channels"),
        ({"ratio": 0.0}, "ratio"),
    ],
)
def test_constructor_rejects_bad_config(kwargs: dict, match: str) -> None:
    base = dict(in_channels=2, base_filters=16, ratio=1.0, filter_list=[16, 32], m_blocks_list=[1, 1], kernel_size=3,
                stride=2, groups_width=16, n_classes=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Net1D(**base)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(2, 12), r"\(B, 12, T\)"),
        (torch.randn(2, 3, 100), r"\(B, 12, T\)"),
        (torch.randn(2, 12, 0), r"\(B, 12, T\)"),
        (torch.ones(2, 12, 100, dtype=torch.long), "floating"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_forward_rejects_bad_input(x, match: str) -> None:
    net = net1d_small(n_classes=2)
    with pytest.raises(ValueError, match=match):
        net(x)


# ---------------------------------------------------------------- checkpoint loader


def _assert_same_weights(a: Net1D, b: Net1D) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_loader_reads_published_format(tmp_path) -> None:
    torch.manual_seed(0)
    source = net1d_small(n_classes=7)
    path = tmp_path / "12_lead_ECGFounder.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)
    target = net1d_small(n_classes=7)
    assert load_ecgfounder_checkpoint(target, path) is target
    _assert_same_weights(source, target)


def test_loader_safetensors_mapping_and_module_prefix(tmp_path) -> None:
    source = net1d_small(n_classes=2)
    path = tmp_path / "weights.safetensors"
    save_safetensors(source.state_dict(), path)
    target = net1d_small(n_classes=2)
    load_ecgfounder_checkpoint(target, str(path))
    _assert_same_weights(source, target)

    prefixed = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    other = net1d_small(n_classes=2)
    load_ecgfounder_checkpoint(other, prefixed)
    _assert_same_weights(source, other)


def test_loader_drop_head(tmp_path) -> None:
    source = net1d_small(n_classes=150)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": source.state_dict()}, path)

    headless = net1d_small(n_classes=0)
    with pytest.raises(ValueError, match=r"unexpected keys.*dense\.bias.*drop_head=True"):
        load_ecgfounder_checkpoint(headless, path)
    load_ecgfounder_checkpoint(headless, path, drop_head=True)
    for k, v in headless.state_dict().items():
        torch.testing.assert_close(v, source.state_dict()[k])

    new_head = net1d_small(n_classes=5)
    head_before = new_head.dense.weight.detach().clone()
    with pytest.raises(ValueError, match=r"shape mismatches.*dense\.weight"):
        load_ecgfounder_checkpoint(new_head, path)
    load_ecgfounder_checkpoint(new_head, path, drop_head=True)
    torch.testing.assert_close(new_head.dense.weight, head_before)
    torch.testing.assert_close(new_head.first_conv.conv.weight, source.first_conv.conv.weight)


def test_loader_lists_missing_unexpected_and_bad_values() -> None:
    sd = net1d_small(n_classes=2).state_dict()
    missing = dict(sd)
    del missing["stage_list.3.block_list.0.se_fc1.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): stage_list\.3\.block_list\.0\.se_fc1\.weight"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), {"state_dict": missing})

    extra = dict(sd, **{"stage_list.9.block_list.0.conv1.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): stage_list\.9"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), extra)

    with pytest.raises(ValueError, match="tensors only"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), dict(sd, note="hello"))

    # A 12-lead checkpoint does not fit a 1-lead model.
    with pytest.raises(ValueError, match=r"first_conv\.conv\.weight"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2, in_channels=1), sd)

    with pytest.raises(ValueError, match="must be a Net1D"):
        load_ecgfounder_checkpoint(torch.nn.Linear(2, 2), sd)
    with pytest.raises(ValueError, match="path or a mapping"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), 42)


def test_loader_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), tmp_path / "absent.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="dict"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), path)


class _CodeRunningPayload:
    """Pickles into a call of os.system: what a malicious checkpoint looks like."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loader_refuses_code_pickles(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = dict(net1d_small(n_classes=2).state_dict())
    state["first_conv.conv.bias"] = _CodeRunningPayload(str(marker))
    torch.save({"state_dict": state}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_ecgfounder_checkpoint(net1d_small(n_classes=2), path)
    assert not marker.exists()


# ---------------------------------------------------------------- optional: the real checkpoint

# First 10 logits of the published 12-lead checkpoint for torch.linspace(-1, 1, 60000).reshape(1, 12, 5000),
# pinned by a third-party regression test (srgnunlu/corio-ecg; see reference/teachers_and_data.md 1.1).
ECGFOUNDER_GOLDEN_LOGITS = [
    8.3751173, -4.1527028, -6.7856750, -2.8647900, 4.4135675,
    -2.2547250, -5.3009405, -6.1225495, -1.0395477, -1.8894272,
]


@pytest.mark.skipif(
    not os.environ.get("PACX_ECGFOUNDER_CKPT"),
    reason="set PACX_ECGFOUNDER_CKPT to 12_lead_ECGFounder.pth to check the real weights",
)
def test_real_ecgfounder_checkpoint_golden_logits() -> None:
    net = load_ecgfounder_checkpoint(ecgfounder_12lead(), os.environ["PACX_ECGFOUNDER_CKPT"]).eval()
    with torch.no_grad():
        logits = net(torch.linspace(-1, 1, 60000).reshape(1, 12, 5000))
    torch.testing.assert_close(logits[0, :10], torch.tensor(ECGFOUNDER_GOLDEN_LOGITS), atol=1e-5, rtol=0)
