"""Stage-2 distillation step against the frozen student's own forward and backward (one process).

The Stage-2 step is one :class:`pacx.nets.PaCXDistiller` training step as the pipeline runs it
(``loss_weights="authors_training"``: lambda_c 0.5, lambda_r 1.0; LoRA r=8 on qkv/fc1/fc2; the
final norm, projection and regression heads and the temperature trainable; GlobalInfoNCE over
two teachers; pacx's ``build_optimizer`` AdamW on the distiller's parameter groups). Teacher
embeddings are cached tensors (random here, ECG 1024-d and labs 256-d), as in the pipeline,
where they come from ``<out>/teachers/<split>/<name>.npy``. Candidates, timed interleaved:

* ``forward``: the student forward alone under ``torch.no_grad`` (LoRA unmerged, train mode);
* ``adapters fwd+bwd``: the student forward plus a backward from a stand-in scalar on the
  pooled embedding, so gradients flow through the frozen base into the adapters and final
  norm only (the floor of any Stage-2 step);
* ``loss fwd+bwd``: the full distiller loss (heads, InfoNCE, regression) forward + backward;
* ``step``: ``loss fwd+bwd`` + AdamW step + ``zero_grad`` (target: within 1.3x of
  ``adapters fwd+bwd``).

No teacher runs in Stage 2. The benchmark proves it on the measured steps two ways: every
``forward``/``embed``/``encode`` of :class:`pacx.nets.Net1D`, :class:`pacx.nets.LabDAE` and
:class:`pacx.nets.Teacher` is wrapped with a call counter, and one step is traced with
``torch.profiler`` and searched for ``aten::conv1d`` (Net1D is the only 1-D convolution in
pacx). Both detectors are first shown to fire on a real Net1D/LabDAE call (positive control).

With ``--compile`` the distiller is wrapped in ``torch.compile`` (as ``TrainerConfig.compile``
wraps the model) and only the eager and compiled steps are timed against each other (the
compiled warm-up includes the compilation).

Run (CPU, small): ``python benchmarks/bench_distill.py --threads 1``
Run (GPU, paper): ``python benchmarks/bench_distill.py --device cuda --paper [--compile] --json distill.json``
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flops import distiller_flops, lookup_peak_tflops, mfu  # noqa: E402
from _timing import (  # noqa: E402
    add_common_args,
    amp_context,
    fmt_mib,
    measure,
    paired_ratio,
    peak_memory_bytes,
    print_header,
    print_table,
    resolve_amp,
    setup,
    write_json,
)

from pacx.engine import build_optimizer  # noqa: E402
from pacx.nets import LabDAE, Net1D, PaCXDistiller, Teacher, create_mae, net1d_small  # noqa: E402

TEACHER_DIMS = {"ecg": 1024, "labs": 256}  # ECGFounder features, LabDAE latent
TARGET = 1.3


@contextmanager
def count_teacher_calls() -> Iterator[dict[str, int]]:
    """Count calls of every teacher entry point (class-level wrappers, restored on exit)."""
    counts: dict[str, int] = {}
    patched = []
    for cls, names in ((Net1D, ("forward", "forward_features")), (LabDAE, ("forward", "encode")), (Teacher, ("embed",))):
        for name in names:
            original = cls.__dict__.get(name)
            if original is None:
                continue
            key = f"{cls.__name__}.{name}"
            counts[key] = 0

            def wrapper(*args: Any, __key: str = key, __orig: Any = original, **kwargs: Any) -> Any:
                counts[__key] += 1
                return __orig(*args, **kwargs)

            setattr(cls, name, functools.wraps(original)(wrapper))
            patched.append((cls, name, original))
    try:
        yield counts
    finally:
        for cls, name, original in patched:
            setattr(cls, name, original)


def conv1d_events(fn: Any, device: torch.device) -> int:
    """Number of ``aten::conv1d`` calls recorded by the profiler while ``fn`` runs once."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
    return sum(evt.count for evt in prof.key_averages() if evt.key == "aten::conv1d")


def positive_control(device: torch.device) -> tuple[int, int]:
    """(counted teacher calls, conv1d events) of one real Net1D + LabDAE call: both must be > 0."""
    net, dae = net1d_small(n_classes=0).to(device).eval(), LabDAE().to(device).eval()
    ecg = torch.randn(2, 12, 1000, device=device)
    labs, observed = torch.rand(2, 50, device=device), torch.ones(2, 50, device=device)

    def run() -> None:
        with torch.no_grad():
            net.forward_features(ecg)
            dae.encode(labs, observed)

    with count_teacher_calls() as counts:
        run()
    return sum(counts.values()), conv1d_events(run, device)


def compile_table(args: argparse.Namespace, distiller: PaCXDistiller, opt: torch.optim.Optimizer, cxr: torch.Tensor,
                  emb: dict[str, torch.Tensor], amp: Any, peak: float | None, device: torch.device) -> None:
    """Eager against ``torch.compile``'d Stage-2 steps (same model, optimiser and batch)."""
    compiled = torch.compile(distiller)

    def step_of(model: Any) -> Any:
        def run() -> None:
            with amp():
                loss, _ = model(cxr, emb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    steps = {"eager": step_of(distiller), "compiled": step_of(compiled)}
    times = measure(steps, device, args.repeats, args.warmup)
    flops = distiller_flops(distiller, args.batch)
    rows = [{
        "eager images/s": args.batch / times["eager"].median,
        "compiled images/s": args.batch / times["compiled"].median,
        "compile speed-up": paired_ratio(times["eager"], times["compiled"]),
        "eager MFU %": mfu(flops, times["eager"].median, peak),
        "compiled MFU %": mfu(flops, times["compiled"].median, peak),
        "eager peak MiB": fmt_mib(peak_memory_bytes(steps["eager"], device)),
        "compiled peak MiB": fmt_mib(peak_memory_bytes(steps["compiled"], device)),
    }]
    print_table(f"torch.compile vs eager, Stage-2 step, batch {args.batch}", list(rows[0]), rows)
    write_json(args.json, "bench_distill", device, args, {"compile": rows})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--preset", default=None,
                        help="student = encoder of this MAE preset (default mae_vit_tiny_patch8_64; --paper mae_vit_base_patch16)")
    parser.add_argument("--batch", type=int, default=None, help="batch (default 32; --paper 256)")
    parser.add_argument("--shared-dim", type=int, default=None, help="shared space (default 128; --paper 256)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card for MFU")
    parser.add_argument("--compile", action="store_true", help="compare torch.compile'd and eager steps")
    args = parser.parse_args(argv)
    device = setup(args, repeats=(5, 10), warmup=(1, 3))
    args.preset = args.preset or ("mae_vit_base_patch16" if args.paper else "mae_vit_tiny_patch8_64")
    args.batch = args.batch or (256 if args.paper else 32)
    args.shared_dim = args.shared_dim or (256 if args.paper else 128)
    amp_dtype = resolve_amp(args, device)
    peak = lookup_peak_tflops(device, args.peak_tflops)
    print_header("bench_distill", device, args, f"preset={args.preset} batch={args.batch} peak_tflops={peak}")

    control_calls, control_conv1d = positive_control(device)
    if control_calls == 0 or control_conv1d == 0:
        raise RuntimeError(f"the teacher detectors do not fire on a real teacher call: {control_calls}, {control_conv1d}")

    student = create_mae(args.preset).encoder  # what Stage 2 loads: the MAE's timm encoder
    distiller = PaCXDistiller(student, TEACHER_DIMS, shared_dim=args.shared_dim, loss_weights="authors_training")
    distiller.to(device).train()
    opt = build_optimizer(distiller, lr=1e-4, weight_decay=0.05)
    size = student.patch_embed.img_size[0]
    cxr = torch.randn(args.batch, 3, size, size, device=device)
    emb = {name: torch.randn(args.batch, dim, device=device) for name, dim in TEACHER_DIMS.items()}

    def amp() -> Any:
        return amp_context(device, amp_dtype)

    def forward() -> None:
        with torch.no_grad(), amp():
            distiller.student(cxr)

    def adapters_fwd_bwd() -> None:
        with amp():
            pooled = distiller.student(cxr)
        pooled.float().square().mean().backward()
        opt.zero_grad(set_to_none=True)

    def loss_fwd_bwd() -> None:
        with amp():
            loss, _ = distiller(cxr, emb)
        loss.backward()

    def step() -> None:
        loss_fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def loss_only() -> None:
        loss_fwd_bwd()
        opt.zero_grad(set_to_none=True)

    if args.compile:
        compile_table(args, distiller, opt, cxr, emb, amp, peak, device)
        return

    candidates = {"forward": forward, "adapters fwd+bwd": adapters_fwd_bwd, "loss fwd+bwd": loss_only, "step": step}
    with count_teacher_calls() as counts:
        times = measure(candidates, device, args.repeats, args.warmup)
        conv1d = conv1d_events(step, device)
    teacher_calls = sum(counts.values())

    step_t = times["step"]
    flops = distiller_flops(distiller, args.batch)
    summary = distiller.tuning_summary
    rows = [{
        "candidate": name,
        "ms": 1e3 * m.median,
        "images/s": args.batch / m.median,
        "step / this": paired_ratio(step_t, m),
        "spread": m.spread,
    } for name, m in times.items()]
    ratio_b = paired_ratio(step_t, times["adapters fwd+bwd"])
    result = {
        "step / adapters fwd+bwd": ratio_b,
        "target": TARGET,
        "within target": ratio_b <= TARGET,
        "step / forward": paired_ratio(step_t, times["forward"]),
        "optimizer share of step": max(0.0, 1.0 - paired_ratio(times["loss fwd+bwd"], step_t)),
        "step images/s": args.batch / step_t.median,
        "MFU %": mfu(flops, step_t.median, peak),
        "peak MiB (step)": fmt_mib(peak_memory_bytes(step, device)),
        "student trainable params": summary.total_trainable,
        "of which adapters": summary.adapter_params,
        "teacher forwards during Stage 2": teacher_calls,
        "conv1d ops in a traced step": conv1d,
        "positive control (calls, conv1d)": f"{control_calls}, {control_conv1d}",
    }
    print_table(f"Stage-2 candidates, batch {args.batch}", list(rows[0]), rows)
    print_table("Stage-2 summary", ["quantity", "value"], [{"quantity": k, "value": v} for k, v in result.items()])
    print(f"\nteacher forwards during Stage 2: {teacher_calls}")
    print(f"step within {TARGET}x of the frozen student's fwd+bwd through the adapters: "
          f"{'yes' if ratio_b <= TARGET else 'NO'} ({ratio_b:.2f}x)")
    write_json(args.json, "bench_distill", device, args, {"candidates": rows, "summary": result})
    if teacher_calls or conv1d:
        raise SystemExit(f"a teacher ran during Stage 2: {counts}, conv1d events {conv1d}")


if __name__ == "__main__":
    main()
