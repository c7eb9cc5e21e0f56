"""Correctness smoke checks of pacx on an accelerator (none of the unit tests needs CUDA).

Each check prints PASS/FAIL and the measured difference; the exit status is the number of
failures (0 = all passed). Small models, so the whole run takes seconds after start-up:

1. MAE: ``forward_features`` on the device (float32) matches the CPU; a bf16-autocast training
   step gives a finite loss, finite gradients and ``last_mask_ratio == 0.9``.
2. GlobalInfoNCE: loss and input gradients on the device (float32) match the CPU; under bf16
   autocast the loss stays within 2% of float32.
3. LoRA: merged and unwrapped forms match the unmerged adapter on the device (float32), and
   under bf16 autocast within bf16 precision; ``unwrap_lora`` restores ``nn.Linear``.
4. PaCXDistiller: a bf16 step on the device is finite, only adapters/norm/heads get gradients.
5. BatchAugment: the Stage-2 batch augmentation of a uint8 batch on the device matches the CPU
   for the same generator seed (the draws are made on the host, so they are identical).
6. Trainer: three optimiser steps of a tiny MAE through ``Trainer.fit`` (bf16 autocast, pinned
   memory, non-blocking copies) finish and write ``final/model.safetensors``.

Run: ``python benchmarks/cuda_smoke.py [--device cuda]`` (also runs on CPU, as a self-test).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pacx.adapters import apply_lora, merge_lora, unwrap_lora
from pacx.data import stage2_batch_transform
from pacx.engine import Trainer, TrainerConfig, make_loader
from pacx.losses import GlobalInfoNCE
from pacx.nets import PaCXDistiller, create_mae

FAILURES: list[str] = []


def check(name: str, fn: Callable[[], tuple[bool, str]]) -> None:
    try:
        ok, detail = fn()
    except Exception as err:  # a crash is a failure of this check, not of the whole run
        ok, detail = False, f"{type(err).__name__}: {err}"
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float().cpu() - b.detach().float().cpu()).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    # float32 comparisons against the CPU need true float32 kernels (cuDNN convolutions use TF32 by default)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    print(f"cuda_smoke on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    mae_cpu = create_mae("mae_vit_tiny_patch8_64").eval()
    mae_dev = copy.deepcopy(mae_cpu).to(device)
    x = torch.randn(4, 3, 64, 64)

    def mae_features() -> tuple[bool, str]:
        with torch.no_grad():
            d = max_diff(mae_dev.forward_features(x.to(device)), mae_cpu.forward_features(x))
        return d < 1e-3, f"max |device - cpu| = {d:.2e} (float32, tol 1e-3)"

    def mae_bf16_step() -> tuple[bool, str]:
        mae_dev.train()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = mae_dev(x.to(device))
        out.loss.backward()
        grads = [p.grad for p in mae_dev.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(out.loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        mae_dev.zero_grad(set_to_none=True)
        return finite and mae_dev.last_mask_ratio == 0.9, (
            f"loss {out.loss.item():.4f}, {len(grads)} finite grads, last_mask_ratio {mae_dev.last_mask_ratio}")

    check("MAE forward_features device == cpu", mae_features)
    check("MAE bf16 training step", mae_bf16_step)

    a, b = torch.randn(64, 32), torch.randn(64, 32)

    def infonce(dev: torch.device, autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        fn = GlobalInfoNCE().to(dev)
        ta, tb = a.to(dev).requires_grad_(True), b.to(dev).requires_grad_(True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = fn(ta, tb)
        loss.backward()
        return loss.detach(), ta.grad

    def infonce_match() -> tuple[bool, str]:
        (l_dev, g_dev), (l_cpu, g_cpu) = infonce(device), infonce(torch.device("cpu"))
        dl, dg = max_diff(l_dev, l_cpu), max_diff(g_dev, g_cpu)
        return dl < 1e-4 and dg < 1e-5, f"|loss diff| {dl:.2e}, max |grad diff| {dg:.2e}"

    def infonce_bf16() -> tuple[bool, str]:
        (low, _), (high, _) = infonce(device, autocast=True), infonce(device)
        rel = abs(low.item() - high.item()) / abs(high.item())
        return bool(torch.isfinite(low)) and rel < 2e-2, f"bf16 {low.item():.5f} vs float32 {high.item():.5f}"

    check("GlobalInfoNCE device == cpu (float32)", infonce_match)
    check("GlobalInfoNCE bf16 autocast", infonce_bf16)

    vit = create_mae("mae_vit_tiny_patch8_64").encoder.to(device).eval()
    apply_lora(vit)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)

    def lora_forms() -> tuple[bool, str]:
        xd = x.to(device)
        with torch.no_grad():
            ref = vit(xd)
            merged = merge_lora(copy.deepcopy(vit))(xd)
            plain = unwrap_lora(copy.deepcopy(vit))
            unwrapped = plain(xd)
            with amp:
                ref_bf16, merged_bf16 = vit(xd), merge_lora(copy.deepcopy(vit))(xd)
        d1, d2, d3 = max_diff(merged, ref), max_diff(unwrapped, ref), max_diff(merged_bf16, ref_bf16)
        ok = d1 < 1e-4 and d2 < 1e-4 and d3 < 0.1 and type(plain.blocks[0].attn.qkv) is nn.Linear
        return ok, f"merged {d1:.2e}, unwrapped {d2:.2e} (float32, tol 1e-4); bf16 merged vs unmerged {d3:.2e} (tol 0.1)"

    check("LoRA merge/unwrap on device", lora_forms)

    def distiller_step() -> tuple[bool, str]:
        student = create_mae("mae_vit_tiny_patch8_64").encoder
        model = PaCXDistiller(student, {"ecg": 64, "labs": 32}, shared_dim=32, loss_weights="authors_training")
        model.to(device).train()
        emb = {"ecg": torch.randn(8, 64, device=device), "labs": torch.randn(8, 32, device=device)}
        with amp:
            loss, parts = model(torch.randn(8, 3, 64, 64, device=device), emb)
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        frozen_with_grad = [n for n in with_grad if "lora_" not in n and not n.startswith(("proj.", "regress.", "infonce."))
                            and not n.startswith("student.norm.")]
        ok = bool(torch.isfinite(loss)) and not frozen_with_grad and any("lora_A" in n for n in with_grad)
        return ok, f"loss {loss.item():.4f}, {len(with_grad)} params with grad, frozen ones with grad: {frozen_with_grad[:3]}"

    check("PaCXDistiller bf16 step", distiller_step)

    def batch_augment() -> tuple[bool, str]:
        raw = torch.randint(0, 256, (16, 1, 80, 80), dtype=torch.uint8)
        outs = [stage2_batch_transform(64, generator=torch.Generator().manual_seed(0))(raw.to(dev)) for dev in
                (device, torch.device("cpu"))]
        d = max_diff(*outs)
        ok = outs[0].device.type == device.type and outs[0].shape == (16, 3, 64, 64) and d < 1e-3
        return ok, f"max |device - cpu| = {d:.2e} (tol 1e-3), output {tuple(outs[0].shape)} on {outs[0].device}"

    check("BatchAugment device == cpu", batch_augment)

    def trainer_fit() -> tuple[bool, str]:
        data = [{"cxr": torch.randn(3, 64, 64)} for _ in range(12)]
        loader = make_loader(data, batch_size=4, pin_memory=device.type == "cuda")
        cfg = TrainerConfig(epochs=1, lr=1e-3, amp="bf16", device=str(device), progress=False, tensorboard=False,
                            log_every=1)
        with tempfile.TemporaryDirectory() as out:
            result = Trainer(cfg, out).fit(create_mae("mae_vit_tiny_patch8_64"), loader,
                                           lambda model, batch: (model(batch["cxr"]).loss, {}))
            written = (Path(out) / "final" / "model.safetensors").is_file()
        loss = result["metrics"].get("loss")
        return result["step"] == 3 and written and loss is not None, f"steps {result['step']}, loss {loss}, final written {written}"

    check("Trainer.fit bf16 (3 steps)", trainer_fit)
    print(f"cuda_smoke: {len(FAILURES)} failure(s){': ' + ', '.join(FAILURES) if FAILURES else ''}")
    return len(FAILURES)


if __name__ == "__main__":
    sys.exit(main())
