"""PaCXDistiller: teachers, loss terms and ablations, tuning strategies, export and an optimiser step."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from pacx.adapters import LoRALinear, lora_state_dict
from pacx.nets import LOSS_WEIGHT_PRESETS, PaCXDistiller

TINY = dict(num_classes=0, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
DIMS = {"ecg": 32, "labs": 16, "toy": 8}  # "toy" is a made-up third modality


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **TINY)


def make(teachers=("ecg", "labs"), seed: int = 0, **kwargs) -> PaCXDistiller:
    kwargs.setdefault("shared_dim", 16)
    model = PaCXDistiller(tiny_vit(seed), {t: DIMS[t] for t in teachers}, **kwargs)
    torch.manual_seed(seed + 1)
    return model


def batch(teachers=("ecg", "labs"), n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cxr = torch.randn(n, 3, 32, 32, generator=gen)
    return cxr, {t: torch.randn(n, DIMS[t], generator=gen) for t in teachers}


def grads(model: nn.Module) -> dict[str, bool]:
    # lora_A's gradient is exactly zero at init (lora_B = 0), so presence is what is checked.
    return {n: p.grad is not None for n, p in model.named_parameters()}


@pytest.mark.parametrize("teachers", [("ecg",), ("ecg", "labs"), ("ecg", "labs", "toy")])
def test_teachers_and_loss_formula(teachers):
    model = make(teachers)
    cxr, emb = batch(teachers)
    loss, parts = model(cxr, emb)
    assert loss.ndim == 0 and torch.isfinite(loss)
    contrastive = torch.stack([parts[f"contrastive/{t}"] for t in teachers]).mean()
    regression = torch.stack([parts[f"regression/{t}"] for t in teachers]).mean()
    torch.testing.assert_close(loss.detach(), 1.0 * contrastive + 0.1 * regression)
    torch.testing.assert_close(parts["loss/total"], loss.detach())
    for t in teachers:
        for key in (f"mi_lower_bound/{t}", f"top1/cxr_to_{t}", f"top1/{t}_to_cxr", f"regression_cosine/{t}"):
            assert key in parts and not parts[key].requires_grad
        torch.testing.assert_close(parts[f"regression_cosine/{t}"], 1 - parts[f"regression/{t}"])
        assert 0.0 <= float(parts[f"top1/cxr_to_{t}"]) <= 1.0
    assert float(parts["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)
    assert set(model.proj) == {"cxr", *teachers} and set(model.regress) == set(teachers)
    assert model.proj["ecg"].linear.in_features == 32 and model.regress["ecg"].linear.out_features == 32

    loss.backward()
    g = grads(model)
    for name, has_grad in g.items():
        if name.startswith("student."):
            assert has_grad == (".lora_" in name or name.startswith("student.norm.")), name
        else:
            assert has_grad, name


def test_mi_lower_bound_is_log_n_minus_infonce():
    model = make(("ecg",), label_smoothing=0.0).eval()
    loss, parts = model(*batch(("ecg",)))
    torch.testing.assert_close(parts["mi_lower_bound/ecg"], math.log(4) - parts["contrastive/ecg"])


def test_regression_only_ablation():
    model = make(lambda_c=0.0, lambda_r=1.0)
    loss, parts = model(*batch())
    assert not any(k.startswith(("contrastive/", "top1/", "mi_lower_bound/")) for k in parts)
    assert "loss/contrastive" not in parts and "logit_scale" not in parts
    torch.testing.assert_close(loss.detach(), parts["loss/regression"])
    loss.backward()
    assert all(p.grad is None for p in model.proj.parameters())
    assert model.infonce.logit_scale.grad is None
    assert all(p.grad is not None for p in model.regress.parameters())
    assert not any(p.requires_grad for p in model.proj.parameters())


def test_contrastive_only_ablation():
    model = make(lambda_c=1.0, lambda_r=0.0)
    loss, parts = model(*batch())
    assert not any(k.startswith("regression") for k in parts) and "loss/regression" not in parts
    loss.backward()
    assert all(p.grad is None for p in model.regress.parameters())
    assert all(p.grad is not None for p in model.proj.parameters())
    assert model.infonce.logit_scale.grad is not None


def test_loss_weight_presets():
    assert LOSS_WEIGHT_PRESETS == {"paper_module": (1.0, 0.1), "authors_training": (0.5, 1.0)}
    model = make()
    assert (model.lambda_c, model.lambda_r) == (1.0, 0.1)
    model = make(loss_weights="authors_training")
    assert (model.lambda_c, model.lambda_r) == (0.5, 1.0)
    loss, parts = model(*batch())
    torch.testing.assert_close(loss.detach(), 0.5 * parts["loss/contrastive"] + 1.0 * parts["loss/regression"])
    model = PaCXDistiller.from_preset(tiny_vit(), {"ecg": 32}, shared_dim=16, lambda_r=0.3)
    assert (model.lambda_c, model.lambda_r) == (0.5, 0.3)


def test_missing_teacher_is_skipped():
    model = make()
    cxr, emb = batch(("ecg",))
    loss, parts = model(cxr, emb)
    assert "contrastive/labs" not in parts
    torch.testing.assert_close(loss.detach(), parts["contrastive/ecg"] + 0.1 * parts["regression/ecg"])
    with pytest.raises(ValueError, match="at least one"):
        model(cxr, {})
    loss, parts = model.eval()(cxr, {})
    assert float(loss) == 0.0


@pytest.mark.parametrize(
    "tuning, expected",
    [
        ("lora", lambda n: ".lora_" in n or n.startswith("norm.")),
        ("last_n_blocks", lambda n: n.startswith(("blocks.1.", "norm."))),
        ("full", lambda n: True),
    ],
)
def test_tuning_strategies(tuning, expected):
    model = make(tuning=tuning, last_n_blocks=1)
    trainable = {n for n, p in model.student.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.student.named_parameters() if expected(n)}
    assert model.tuning_summary.strategy == tuning
    loss, _ = model(*batch())
    loss.backward()
    for name, param in model.student.named_parameters():
        assert (param.grad is not None) == (name in trainable), name


def test_lora_options_are_passed_on():
    model = make(lora={"r": 4, "alpha": 4, "targets": ("qkv",)}, trainable_norms="none")
    qkv = model.student.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and qkv.r == 4 and qkv.scaling == 1.0
    assert not isinstance(model.student.blocks[0].mlp.fc1, LoRALinear)
    assert not model.student.norm.weight.requires_grad


def test_bf16_autocast_cpu():
    model = make()
    cxr, emb = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = model(cxr, emb)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.student.blocks[0].attn.qkv.lora_B.grad.dtype == torch.float32
    assert torch.isfinite(model.student.blocks[0].attn.qkv.lora_B.grad).all()


def test_embed_and_projections():
    model = make().eval()
    cxr, emb = batch()
    assert model.embed(cxr).shape == (4, 64)
    assert model.project(cxr).shape == (4, 16)
    z = model.project_teacher("labs", emb["labs"], normalize=True)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="unknown teacher 'toy'"):
        model.project_teacher("toy", torch.randn(4, 8))
    with pytest.raises(ValueError, match="'labs' must have dimension 16"):
        model.project_teacher("labs", torch.randn(4, 15))


@pytest.mark.parametrize(
    "emb, match",
    [
        ({"ecg": torch.randn(4, 31)}, "'ecg' must have dimension 32"),
        ({"ecg": torch.randn(3, 32)}, "'ecg' has batch size 3"),
        ({"ecg": torch.randn(4, 32, 1)}, "'ecg' must be a float tensor"),
        ({"ecg": torch.randn(4, 32), "eeg": torch.randn(4, 32)}, "unknown teacher 'eeg'"),
    ],
)
def test_bad_batches(emb, match):
    model = make()
    with pytest.raises(ValueError, match=match):
        model(batch()[0], emb)
    with pytest.raises(ValueError, match="cxr must be"):
        model(torch.randn(4, 32, 32), {"ecg": torch.randn(4, 32)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tuning": "partial"}, "strategy must be"),
        ({"lora": {"rank": 8}}, "unknown"),
        ({"lora": {"r": 0}}, "r must be"),
        ({"lora": {"alpha": 0}}, "alpha must be"),
        ({"lora": {"dropout": 1.0}}, "dropout must be"),
        ({"lambda_c": -1.0}, "lambda_c"),
        ({"lambda_c": 0.0, "lambda_r": 0.0}, "both be 0"),
        ({"loss_weights": "mine"}, "loss_weights"),
        ({"shared_dim": 0}, "shared_dim"),
        ({"temperature": 0.0}, "temperature"),
        ({"trainable_norms": "some"}, "trainable_norms"),
    ],
)
def test_bad_options(kwargs, match):
    student = tiny_vit()
    with pytest.raises(ValueError, match=match):
        PaCXDistiller(student, {"ecg": 32}, **kwargs)
    # the student is only modified once every option is valid
    assert not any(isinstance(m, LoRALinear) for m in student.modules())
    assert all(p.requires_grad for p in student.parameters())


def test_bad_construction():
    with pytest.raises(ValueError, match="teacher_dims"):
        PaCXDistiller(tiny_vit(), {})
    with pytest.raises(ValueError, match="teacher_dims\\['ecg'\\]"):
        PaCXDistiller(tiny_vit(), {"ecg": 0})
    with pytest.raises(ValueError, match="teacher names"):
        PaCXDistiller(tiny_vit(), {"cxr": 8})
    with pytest.raises(ValueError, match="num_classes=0"):
        PaCXDistiller(timm.create_model("vit_tiny_patch16_224", **{**TINY, "num_classes": 3}), {"ecg": 32})
    student = tiny_vit()
    PaCXDistiller(student, {"ecg": 32})
    with pytest.raises(ValueError, match="already applied"):
        PaCXDistiller(student, {"ecg": 32})


def test_param_groups():
    model = make()
    groups = model.param_groups(0.05)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert ids(decay["params"]) | ids(no_decay["params"]) == ids(trainable)
    assert not ids(decay["params"]) & ids(no_decay["params"])
    assert id(model.infonce.logit_scale) in ids(no_decay["params"])
    assert id(model.student.norm.weight) in ids(no_decay["params"])
    assert id(model.proj["ecg"].linear.bias) in ids(no_decay["params"])
    assert id(model.student.blocks[0].attn.qkv.lora_A) in ids(decay["params"])
    full = make(tuning="full")
    no_decay_full = ids(full.param_groups(0.05)[1]["params"])
    assert id(full.student.pos_embed) in no_decay_full and id(full.student.cls_token) in no_decay_full
    with pytest.raises(ValueError, match="weight_decay"):
        model.param_groups(-0.1)


def test_stage2_optimiser_step_and_export():
    model = make(("ecg", "labs"), loss_weights="authors_training")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {k: v.clone() for k, v in lora_state_dict(model.student).items()}
    optimiser = torch.optim.AdamW(model.param_groups(0.05), lr=1e-3)
    loss, _ = model.train()(*batch())
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimiser.step()

    after = lora_state_dict(model.student)
    assert not torch.equal(after["blocks.0.attn.qkv.lora_B"], adapters["blocks.0.attn.qkv.lora_B"])
    assert not torch.equal(after["norm.weight"], adapters["norm.weight"])
    for name, value in frozen.items():
        assert torch.equal(model.get_parameter(name), value), name

    model.eval()
    cxr, _ = batch()
    encoder = model.export_encoder()
    assert not any(isinstance(m, LoRALinear) for m in encoder.modules())
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert any(isinstance(m, LoRALinear) for m in model.student.modules())  # the distiller is untouched
    fresh = tiny_vit(seed=7).eval()
    fresh.load_state_dict(encoder.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(cxr), model.embed(cxr), atol=1e-5, rtol=0)
