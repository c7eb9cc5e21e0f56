from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pacx.engine import Trainer, TrainerConfig, load_checkpoint, make_loader, seed_everything, unwrap_model
from pacx.io import load_safetensors
from tests.engine._toy import DropoutMLP, NoisyRegression, regression_step

FAST = dict(progress=False, tensorboard=False, log_every=1)


def _fit(tmp_path, name, cfg, model_seed=0, batch_size=4, **fit_kwargs):
    seed_everything(model_seed)
    model = DropoutMLP()
    loader = make_loader(NoisyRegression(n=24), batch_size, seed=1)
    trainer = Trainer(cfg, tmp_path / name, run_config={"stage": "toy"})
    result = trainer.fit(model, loader, regression_step, **fit_kwargs)
    return model, result


def test_same_seed_same_weights_on_cpu(tmp_path):
    cfg = TrainerConfig(epochs=2, lr=1e-2, seed=3, **FAST)
    a, _ = _fit(tmp_path, "a", cfg)
    b, _ = _fit(tmp_path, "b", cfg)
    c, _ = _fit(tmp_path, "c", TrainerConfig(epochs=2, lr=1e-2, seed=4, **FAST))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_outputs_layout_and_contents(tmp_path):
    cfg = TrainerConfig(epochs=2, lr=1e-2, warmup_epochs=0.5, save_every=4, keep_last=1, log_every=2, progress=False)
    def extra_meta(model):  # e.g. the MAE mask ratio actually used
        return {"mask_ratio": 0.9, "params": sum(p.numel() for p in model.parameters())}

    _, result = _fit(tmp_path, "run", cfg, extra_meta=extra_meta)
    out = tmp_path / "run"
    assert result["step"] == 12 and result["total_steps"] == 12 and result["steps_per_epoch"] == 6

    config = json.loads((out / "config.json").read_text())
    assert TrainerConfig.from_dict(config["trainer"]) == cfg
    assert config["run_config"] == {"stage": "toy"}
    assert config["resolved"]["warmup_steps"] == 3 and config["resolved"]["amp_dtype"] == "float32"

    with open(out / "logs" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"loss", "abs_err", "lr", "epoch"} <= set(rows[0])
    assert any((out / "logs" / "tb").iterdir())

    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["step_12"]  # keep_last=1
    ckpt = load_checkpoint(out / "checkpoints" / "step_12")
    assert ckpt.meta["extra"]["mask_ratio"] == 0.9 and ckpt.meta["run_config"] == {"stage": "toy"}
    final = json.loads((out / "final" / "config.json").read_text())
    assert final["step"] == 12 and final["extra"]["mask_ratio"] == 0.9
    assert load_safetensors(out / "final" / "model.safetensors").keys() == ckpt.model_state.keys()


def test_gradient_accumulation_equals_large_batch(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64))

    def run(name, batch_size, accumulation):
        torch.manual_seed(1)
        model = nn.Linear(3, 1).double()
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        cfg = TrainerConfig(epochs=2, lr=0.05, accumulation_steps=accumulation, grad_clip=0.5, **FAST)
        Trainer(cfg, tmp_path / name).fit(model, loader, lambda m, b: (F.mse_loss(m(b[0]), b[1]), {}))
        return model

    big, small = run("big", 8, 1), run("small", 4, 2)
    for key, value in big.state_dict().items():
        torch.testing.assert_close(small.state_dict()[key], value, rtol=0, atol=1e-12)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path, amp):
    cfg = TrainerConfig(epochs=1, lr=1e-2, amp=amp, **FAST)
    model, result = _fit(tmp_path, amp, cfg)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32  # autocast, weights stay fp32
    state = load_checkpoint(result["checkpoint"]).trainer_state
    assert (state["scaler"] is not None) == (amp == "fp16")
    assert ("amp_scale" in result["metrics"]) == (amp == "fp16")


def test_compile_gives_the_same_weights(tmp_path):
    cfg = dict(epochs=1, lr=1e-2, max_steps=2, **FAST)
    eager, _ = _fit(tmp_path, "eager", TrainerConfig(**cfg))
    compiled, _ = _fit(tmp_path, "compiled", TrainerConfig(compile=True, compile_backend="eager", **cfg))
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=0, atol=1e-7)


def test_max_steps_caps_the_run_and_resume_of_finished_run_is_a_no_op(tmp_path):
    cfg = TrainerConfig(epochs=5, lr=1e-2, max_steps=4, **FAST)
    model, result = _fit(tmp_path, "run", cfg)
    assert result["step"] == 4 and result["epoch"] == 0
    again, result2 = _fit(tmp_path, "run", cfg, resume="latest")
    assert result2["step"] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_step_fn_contract_is_checked(tmp_path):
    model = nn.Linear(2, 1)
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = Trainer(TrainerConfig(**FAST), tmp_path)
    with pytest.raises(ValueError, match=r"must return \(loss, logs\)"):
        trainer.fit(model, loader, lambda m, b: m(b[0]).sum())
    with pytest.raises(ValueError, match="scalar tensor"):
        trainer.fit(model, loader, lambda m, b: (m(b[0]), {}))
    with pytest.raises(ValueError, match="does not require grad"):
        trainer.fit(model, loader, lambda m, b: (torch.tensor(1.0), {}))
    with pytest.raises(ValueError, match="at least accumulation_steps=3"):
        Trainer(TrainerConfig(accumulation_steps=3, **FAST), tmp_path).fit(
            model, loader, lambda m, b: (m(b[0]).sum(), {})
        )
    with pytest.raises(FloatingPointError, match="loss is nan"):
        trainer.fit(model, loader, lambda m, b: (m(b[0]).sum() * float("nan"), {}))


def test_trainer_accepts_dict_config_and_rejects_unknown_keys(tmp_path):
    assert Trainer({"epochs": 2}, tmp_path).config.epochs == 2
    with pytest.raises(ValueError, match="unknown TrainerConfig keys"):
        Trainer({"epoch": 2}, tmp_path)


def test_unwrap_model():
    model = nn.Linear(2, 2)
    assert unwrap_model(model) is model
    compiled = torch.compile(model, backend="eager")
    assert unwrap_model(compiled) is model
