from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pacx.engine.trainer as trainer_module
from pacx.engine import (
    Trainer,
    TrainerConfig,
    list_checkpoints,
    load_checkpoint,
    make_loader,
    resolve_checkpoint,
    seed_everything,
    unwrap_model,
)
from pacx.io import load_safetensors
from tests.engine._toy import DropoutMLP, NoisyRegression, regression_step

FAST = dict(progress=False, tensorboard=False, log_every=1)


def _fit(tmp_path, name, cfg, model_seed=0, batch_size=4, run_config=None, step_fn=regression_step, **fit_kwargs):
    seed_everything(model_seed)
    model = DropoutMLP()
    loader = make_loader(NoisyRegression(n=24), batch_size, seed=1)
    trainer = Trainer(cfg, tmp_path / name, run_config=run_config or {"stage": "toy"})
    result = trainer.fit(model, loader, step_fn, **fit_kwargs)
    return model, result


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


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


# ----------------------------------------------------------------------------------------
# validation and the best checkpoint


def _walk_fit(tmp_path, cfg, step_fn=None, resume=None):
    """w (one weight, from 0) walks towards 3 on the training data, about lr per step; the
    validation target is 1, so the validation loss (w - 1)^2 is lowest after epoch 1."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    train = DataLoader(TensorDataset(torch.ones(4, 1), torch.full((4, 1), 3.0)), batch_size=1)
    val = DataLoader(TensorDataset(torch.ones(3, 1), torch.ones(3, 1)), batch_size=2)

    def walk_step(m, batch):
        x, y = batch
        return F.mse_loss(m(x), y), {"w": unwrap_model(m).weight.reshape(())}

    trainer = Trainer(cfg, tmp_path / "walk")
    return model, trainer.fit(model, train, step_fn or walk_step, resume=resume, val_loader=val)


WALK = dict(epochs=3, lr=0.25, weight_decay=0.0, min_lr_ratio=1.0, save_every=4, keep_last=3, **FAST)


def test_best_checkpoint_holds_the_lowest_validation_epoch(tmp_path):
    model, result = _walk_fit(tmp_path, TrainerConfig(**WALK))
    out = tmp_path / "walk"
    val = {int(r["step"]): (float(r["val_loss"]), float(r["val_w"])) for r in _csv(out / "logs" / "metrics.csv")
           if r["val_loss"]}
    assert sorted(val) == [4, 8, 12]
    assert val[4][0] < val[8][0] < val[12][0]  # w passed 1 in epoch 1, then moved away
    assert result["best"] == {"step": 4, "epoch": 1, "val_loss": val[4][0], "dir": str(out / "best")}
    best_weights = load_safetensors(out / "best" / "model.safetensors")["weight"]
    assert torch.equal(best_weights, load_checkpoint(out / "checkpoints" / "step_4").model_state["weight"])
    assert not torch.equal(best_weights, model.weight.detach())
    assert val[4] == pytest.approx(((best_weights.item() - 1) ** 2, best_weights.item()), rel=1e-6)
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["best"] == {"step": 4, "epoch": 1, "val_loss": val[4][0]} and config["format"] == "pacx-final/1"
    assert result["metrics"]["val_loss"] == val[12][0]


def test_resume_keeps_the_best(tmp_path):
    calls = 0

    def crashing_step(m, batch):
        nonlocal calls
        calls += torch.is_grad_enabled()  # training calls only: validation runs step_fn too
        if calls == 10:  # in epoch 3, after the step-8 checkpoint
            raise RuntimeError("simulated crash")
        x, y = batch
        return F.mse_loss(m(x), y), {}

    with pytest.raises(RuntimeError, match="simulated crash"):
        _walk_fit(tmp_path, TrainerConfig(**WALK), step_fn=crashing_step)
    best_before = (tmp_path / "walk" / "best" / "model.safetensors").read_bytes()
    assert resolve_checkpoint("latest", tmp_path / "walk").name == "step_8"
    _, result = _walk_fit(tmp_path, TrainerConfig(**WALK), resume="latest")
    assert result["step"] == 12 and result["best"]["step"] == 4 and result["best"]["epoch"] == 1
    assert (tmp_path / "walk" / "best" / "model.safetensors").read_bytes() == best_before


def test_validation_is_weighted_by_batch_size_and_leaves_training_unchanged(tmp_path):
    seen = []

    def val_step(m, batch):  # val loss = mean of 0..7 over the samples = 3.5, whatever the batching
        seen.append((m.training, m.net[3].training, torch.is_grad_enabled()))
        x = batch[0].float()
        return x.mean(), {"double": 2 * x.mean()}

    # shuffle=True without a generator: each pass draws from the global torch RNG
    val = DataLoader(TensorDataset(torch.arange(8)), batch_size=3, shuffle=True)
    cfg = TrainerConfig(epochs=3, lr=1e-2, validate_every=2, **FAST)
    with_val, result = _fit(tmp_path, "val", cfg, val_loader=val, val_step_fn=val_step)
    without_val, plain = _fit(tmp_path, "plain", cfg)
    for key, value in without_val.state_dict().items():
        assert torch.equal(with_val.state_dict()[key], value), key
    assert set(seen) == {(False, False, False)} and len(seen) == 2 * 3  # two passes of three batches
    assert with_val.training and with_val.net[3].training  # training mode is back
    rows = {int(r["step"]): r for r in _csv(tmp_path / "val" / "logs" / "metrics.csv")}
    assert [s for s, r in rows.items() if r["val_loss"]] == [12, 18]  # every 2nd epoch and the last step
    assert float(rows[12]["val_loss"]) == pytest.approx(3.5) and float(rows[12]["val_double"]) == pytest.approx(7.0)
    assert rows[12]["loss"] and rows[12]["lr"]  # one row per step: train and val scalars together
    assert result["best"]["val_loss"] == pytest.approx(3.5) and plain["best"] is None


def test_progress_names_the_stage_and_epoch(tmp_path, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.descriptions, self.postfixes = [kwargs["desc"]], []
            bars.append(self)

        def set_description(self, desc, refresh=True):
            self.descriptions.append(desc)

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            self.postfixes.append({**(ordered_dict or {}), **kwargs})

        def update(self, n=1):
            pass

        def close(self):
            pass

    monkeypatch.setattr(trainer_module, "tqdm", Bar)
    val = DataLoader(NoisyRegression(n=4), batch_size=2)
    _fit(tmp_path, "bar", TrainerConfig(epochs=2, lr=1e-2, name="distill", log_every=3, progress=True,
                                         tensorboard=False), val_loader=val)
    assert bars[0].descriptions == ["distill", "distill epoch 1/2", "distill epoch 2/2"]
    assert set(bars[0].postfixes[0]) == {"loss"} and set(bars[0].postfixes[-1]) == {"loss", "val_loss"}


# ----------------------------------------------------------------------------------------
# failures: non-finite losses, reruns, changed configurations, damaged checkpoints


def test_nan_between_log_steps_never_reaches_a_checkpoint(tmp_path):
    calls = 0

    def nan_at_step_5(model, batch):
        nonlocal calls
        calls += 1
        loss, logs = regression_step(model, batch)
        return (loss * float("nan") if calls == 5 else loss), logs

    cfg = TrainerConfig(epochs=2, lr=1e-2, save_every=2, keep_last=1, log_every=100, progress=False,
                        tensorboard=False)
    with pytest.raises(FloatingPointError, match="loss is nan at a step between 5 and 6"):
        _fit(tmp_path, "run", cfg, step_fn=nan_at_step_5)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_4"]  # the step-6 save was refused, step 4 kept
    assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpts[0]).model_state.values())
    assert not (tmp_path / "run" / "final").exists()


def test_fresh_run_owns_the_checkpoint_folder(tmp_path):
    _fit(tmp_path, "run", TrainerConfig(epochs=2, lr=1e-2, save_every=2, keep_last=2, **FAST))  # steps 2..12
    short = TrainerConfig(epochs=1, lr=5e-3, max_steps=4, save_every=2, keep_last=2, **FAST)
    _fit(tmp_path, "run", short)  # a rerun after a config change, not a resume
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step_2", "step_4"]  # not outranked by step 12
    latest = resolve_checkpoint("latest", tmp_path / "run")
    assert latest.name == "step_4" and load_checkpoint(latest).meta["trainer"]["lr"] == 5e-3
    previous = [p for p in ckpt_dir.iterdir() if p.name.startswith("previous_")]
    assert len(previous) == 1 and [p.name for p in list_checkpoints(previous[0])] == ["step_10", "step_12"]
    _, again = _fit(tmp_path, "run", short, resume="latest")  # the rerun's own checkpoint
    assert again["step"] == 4


def test_resume_refuses_a_changed_configuration(tmp_path):
    cfg = dict(epochs=2, lr=1e-2, max_steps=3, **FAST)
    _fit(tmp_path, "run", TrainerConfig(**cfg))
    with pytest.raises(ValueError, match="configuration changed") as err:
        _fit(tmp_path, "run", TrainerConfig(**{**cfg, "lr": 2e-2, "epochs": 3}), resume="latest")
    assert "epochs: saved 2, current 3" in str(err.value) and "lr: saved 0.01, current 0.02" in str(err.value)
    with pytest.raises(ValueError, match=r"batch_size \(global\): saved 4, current 8"):
        _fit(tmp_path, "run", TrainerConfig(**cfg), batch_size=8, resume="latest")
    with pytest.raises(ValueError, match="run_config.stage: saved 'toy', current 'other'"):
        _fit(tmp_path, "run", TrainerConfig(**cfg), run_config={"stage": "other"}, resume="latest")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["trainer"]["lr"] == 1e-2  # nothing written
    free = {"log_every": 2, "keep_last": 3, "save_every": 5, "name": "again", "validate_every": 2}
    _, result = _fit(tmp_path, "run", TrainerConfig(**{**cfg, **free}), resume="latest")
    assert result["step"] == 3


def test_resume_skips_a_damaged_checkpoint(tmp_path):
    cfg = TrainerConfig(epochs=1, lr=1e-2, save_every=2, keep_last=3, **FAST)
    reference, _ = _fit(tmp_path, "reference", cfg)
    _fit(tmp_path, "run", cfg)
    weights = tmp_path / "run" / "checkpoints" / "step_6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5])  # e.g. a copy cut short
    with pytest.warns(UserWarning, match=r"step_6 is incomplete or damaged \(model.safetensors: "):
        resumed, result = _fit(tmp_path, "run", cfg, resume="latest")
    assert result["step"] == 6
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert Path(resolved["resumed_from"]).name == "step_4"
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
