"""Training entry point for the crash/resume tests: ``python -m tests.engine._train_script --out DIR``.

Options make the run hang in ``step_fn`` (so the test can SIGKILL it mid-training) or exit
abruptly half-way through writing a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import pacx.engine.checkpoint as checkpoint_module
from pacx.engine import Trainer, TrainerConfig, make_loader, seed_everything
from tests.engine._toy import DropoutMLP, NoisyRegression, regression_step

CONFIG = dict(
    epochs=3, lr=5e-3, warmup_steps=3, min_lr_ratio=0.1, accumulation_steps=2, grad_clip=1.0, save_every=4,
    keep_last=2, log_every=1, seed=7, progress=False, tensorboard=False,
)
BATCH_SIZE = 4  # 48 samples -> 12 batches -> 6 optimiser steps per epoch, 18 in all


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--hang-at-call", type=int, default=None, help="block in the N-th step_fn call (1-based)")
    parser.add_argument("--crash-in-save-at", type=int, default=None, help="os._exit inside the save of this step")
    args = parser.parse_args(argv)
    out = Path(args.out)

    calls = 0

    def step_fn(model, batch):
        nonlocal calls
        calls += 1
        if args.hang_at_call is not None and calls == args.hang_at_call:
            (out / "HANGING").write_text(str(calls))
            time.sleep(600)  # the test kills the process here
        return regression_step(model, batch)

    if args.crash_in_save_at is not None:
        real_save_json = checkpoint_module.save_json
        prefix = f"step_{args.crash_in_save_at}.tmp-"

        def crashing_save_json(obj, path):
            path = Path(path)
            if path.parent.name.startswith(prefix) and path.name == "trainer_state.json":
                os._exit(3)  # weights and trainer tensors are written, the rest is not
            return real_save_json(obj, path)

        checkpoint_module.save_json = crashing_save_json

    seed_everything(0)
    model = DropoutMLP()
    loader = make_loader(NoisyRegression(), BATCH_SIZE, shuffle=True, num_workers=0, seed=3)
    trainer = Trainer(TrainerConfig(**CONFIG), out, run_config={"script": "tests.engine._train_script"})
    return trainer.fit(model, loader, step_fn, resume=args.resume, extra_meta={"mask_ratio": 0.9})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
