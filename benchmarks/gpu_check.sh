#!/usr/bin/env bash
# GPU check of pacx: environment, CUDA correctness, and the benchmarks at the paper's sizes.
#
# One script, at most 8 minutes on one H100/H200 (any CUDA machine works). Every step runs under
# `timeout`; the per-step limits add up to <= 465 s, and a global budget (PACX_GPU_BUDGET_S,
# default 480 s) shortens or skips the last steps if an earlier one (e.g. an install) ran long.
# Steps are ordered by importance, so a cut run still says the most.
#
#   step                  limit  what
#   env                    (15)  nvidia-smi, python/torch/CUDA/timm/monai versions (pip install -e . only if pacx is unimportable)
#   cuda_smoke              30   benchmarks/cuda_smoke.py: MAE/InfoNCE/LoRA/distiller/Trainer correctness on the GPU
#   pytest                  25   bf16/autocast/compile unit tests (they run on CPU: no unit test needs CUDA)
#   dist_nccl               30   torchrun GlobalInfoNCE 2-rank == 1-rank on NCCL (only with >= 2 GPUs; else skipped, 0 s)
#   bench_losses            20   GlobalInfoNCE vs two-matmul InfoNCE at B = 256..16384 (time, ops, host reads, memory)
#   bench_mae               55   ViT-B/16 224 px, batch 256, bf16, mask 0.90 / 0.75 / ~0, batch sweep up to the paper's
#                                512, 320 px, AdamW for-loop vs foreach vs fused
#   bench_distill           30   ViT-B/16 Stage-2 step vs frozen fwd / fwd+bwd, batch 256, teacher-call count
#   bench_trainer          110   Trainer.fit / isolated step, Stage 1 (mask 0.90, MFU) and Stage 2, synthetic 224-px cohort
#   bench_data              45   loader images/s, 320 px stored -> 224 px, float32 vs uint8, per-sample aug in workers vs
#                                batch aug on the GPU, 0 and N workers, headroom against bench_distill's step
#   bench_mae_compile       70   torch.compile vs eager MAE step at mask 0.90 (compilation included in the limit)
#   bench_distill_compile   60   torch.compile vs eager Stage-2 step (compilation included)
#   bench_lora              20   merged/unmerged LoRA inference vs plain ViT-B, LoRA vs head-only training step
#                          ---
#                          465 + env (~15 s; more only if pacx must be pip-installed: the budget then trims the tail)
#
# Output: JSON per benchmark and gpu_check.log under $OUT (if set) else /tmp/pacx_gpu; caches
# (cohort, storage variants) under /tmp/pacx_bench_cache, never under $OUT.
# Run from anywhere: `bash benchmarks/gpu_check.sh`.
# PACX_GPU_CHECK_LIST=1 prints every step's command (shell-quoted, one `STEP name limit cmd...` line
# each) and runs nothing: tests/benchmarks parse every command with it, so the script cannot rot.

set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
OUT_DIR="${OUT:-/tmp/pacx_gpu}"
LIST_ONLY="${PACX_GPU_CHECK_LIST:-0}"
if [[ "$LIST_ONLY" != 1 ]]; then
    mkdir -p "$OUT_DIR"
    LOG="$OUT_DIR/gpu_check.log"
    : > "$LOG"
    exec > >(tee -a "$LOG") 2>&1
fi

BUDGET_S="${PACX_GPU_BUDGET_S:-480}"
START=$(date +%s)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PACX_BENCH_CACHE="${PACX_BENCH_CACHE:-/tmp/pacx_bench_cache}"
export TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-$(command -v python || command -v python3)}"
SUMMARY=()

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT, budget left); record rc and seconds.
step() {
    local name=$1 limit=$2
    shift 2
    if [[ "$LIST_ONLY" == 1 ]]; then
        printf 'STEP %s %s' "$name" "$limit"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    local left=$(( BUDGET_S - $(elapsed) ))
    if (( left < 15 )); then
        echo "=== [$name] SKIPPED: ${left}s of the ${BUDGET_S}s budget left"
        SUMMARY+=("$name: skipped (budget)")
        return 0
    fi
    local t=$(( limit < left ? limit : left ))
    echo
    echo "=== [$name] (limit ${t}s, t+$(elapsed)s): $*"
    local s rc
    s=$(date +%s)
    timeout --kill-after=5 "$t" "$@"
    rc=$?
    local d=$(( $(date +%s) - s ))
    local note=""
    (( rc == 124 || rc == 137 )) && note=" TIMED OUT"
    echo "=== [$name] rc=$rc in ${d}s${note}"
    SUMMARY+=("$name: rc=$rc ${d}s/${t}s${note}")
}

# The environment report, and the stop on a machine without CUDA (skipped in list mode).
env_section() {
echo "pacx gpu_check: repo $REPO, output $OUT_DIR, budget ${BUDGET_S}s, $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# ---------------------------------------------------------------- env
echo; echo "=== [env] (t+$(elapsed)s)"
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1 | head -9
timeout 10 nvidia-smi topo -m 2>/dev/null | head -6
echo "cpus: $(nproc)  mem: $(free -g 2>/dev/null | awk '/Mem:/{print $2" GiB"}')  disk /tmp: $(df -h /tmp | awk 'NR==2{print $4}') free"
versions() {
    timeout 60 "$PY" - <<'EOF_PY'
import importlib, platform, sys
import torch
print(f"python {platform.python_version()}  torch {torch.__version__}  CUDA {torch.version.cuda}  "
      f"cuDNN {torch.backends.cudnn.version()}  GPUs {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB sm_{p.major}{p.minor} bf16={torch.cuda.is_bf16_supported()}")
for name in ("timm", "torchvision", "monai", "numpy", "scipy", "safetensors", "einops", "pandas", "triton"):
    try:
        print(f"  {name} {importlib.import_module(name).__version__}")
    except Exception as err:  # report, do not stop: each step needs only some of them
        print(f"  {name} MISSING ({type(err).__name__})")
try:
    import pacx, pacx.data, pacx.engine, pacx.nets
    print(f"  pacx {pacx.__version__} from {pacx.__file__}")
except Exception as err:
    print(f"  pacx NOT IMPORTABLE: {type(err).__name__}: {err}")
    sys.exit(3)
EOF_PY
}
if ! versions; then
    # PYTHONPATH already points at the repo, so this only helps when a dependency is missing
    echo "pacx not importable; trying pip install -e . (reusing the installed torch)"
    timeout 90 "$PY" -m pip install -q -e . --no-build-isolation \
        || timeout 30 "$PY" -m pip install -q -e . --no-deps --no-build-isolation
    versions || echo "pacx still not importable: the steps below will fail"
fi
SUMMARY+=("env: done at t+$(elapsed)s")

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ "$NGPU" == "0" ]]; then
    echo "no CUDA device visible: stopping after the environment report"
    exit 1
fi
}

if [[ "$LIST_ONLY" == 1 ]]; then
    NGPU=2  # list the multi-GPU step too
else
    env_section
fi

# ---------------------------------------------------------------- correctness
step cuda_smoke 30 "$PY" benchmarks/cuda_smoke.py --device cuda
step pytest 25 "$PY" -m pytest -q -x -p no:cacheprovider tests/losses tests/adapters tests/nets/test_mae.py \
    tests/nets/test_distiller.py -k "bf16 or autocast or cuda or compile"
if (( NGPU >= 2 )); then
    step dist_nccl 30 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
        benchmarks/dist_infonce_check.py --per-rank 64 --dim 256
else
    echo; echo "=== [dist_nccl] skipped: $NGPU GPU(s), needs 2"
    SUMMARY+=("dist_nccl: skipped ($NGPU GPU)")
fi

# ---------------------------------------------------------------- benchmarks, paper sizes, bf16
step bench_losses 20 "$PY" benchmarks/bench_losses.py --device cuda --sizes 256,1024,4096,16384 \
    --json "$OUT_DIR/bench_losses.json"
step bench_mae 55 "$PY" benchmarks/bench_mae.py --device cuda --paper --batch-sizes 128,512 --image-sizes 320 \
    --json "$OUT_DIR/bench_mae.json"
step bench_distill 30 "$PY" benchmarks/bench_distill.py --device cuda --paper --json "$OUT_DIR/bench_distill.json"
WORKERS=$(( $(nproc) - 2 < 12 ? $(nproc) - 2 : 12 ))
(( WORKERS < 0 )) && WORKERS=0
step bench_trainer 110 "$PY" benchmarks/bench_trainer.py --device cuda --paper --repeats 2 --steps 60 --skip 10 \
    --workers "$WORKERS" --n-patients 400 --json "$OUT_DIR/bench_trainer.json"
if [[ "$LIST_ONLY" == 1 ]]; then
    MODEL_IPS=1000  # a placeholder, so the listed command has the flag
else
    MODEL_IPS=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["tables"]["summary"]["step images/s"])' \
        "$OUT_DIR/bench_distill.json" 2>/dev/null || true)
fi
step bench_data 45 "$PY" benchmarks/bench_data.py --device cuda --paper --cohort-size 224 --n-patients 400 \
    --workers "0,$WORKERS" ${MODEL_IPS:+--model-ips "$MODEL_IPS"} --json "$OUT_DIR/bench_data.json"
step bench_mae_compile 70 "$PY" benchmarks/bench_mae.py --device cuda --paper --compile --ratios 0.90 \
    --json "$OUT_DIR/bench_mae_compile.json"
step bench_distill_compile 60 "$PY" benchmarks/bench_distill.py --device cuda --paper --compile \
    --json "$OUT_DIR/bench_distill_compile.json"
step bench_lora 20 "$PY" benchmarks/bench_lora.py --device cuda --paper --json "$OUT_DIR/bench_lora.json"

[[ "$LIST_ONLY" == 1 ]] && exit 0

# ---------------------------------------------------------------- summary
echo
echo "=== summary (total $(elapsed)s of ${BUDGET_S}s)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null
ls -la "$OUT_DIR"
