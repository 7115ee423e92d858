#!/usr/bin/env bash
# One prepared check of the GPU path, for a single-GPU machine, each part in under 8 minutes:
#   scripts/gpu_check.sh OUT_DIR            # part "core": items 1-5 below
#   scripts/gpu_check.sh OUT_DIR epoch      # part "epoch": item 6, in its own device call
# 1. the GPU and versions; 2. the GPU tests (pytest -m gpu: NCCL world-size-1 DDP fit, bf16,
# channels_last, no CUDA syncs in the step); 3. `convnets bench model` for alexnet and alexnet2012
# at batch 256, bf16, channels_last, with and without torch.compile, and alexnet at batch 2048
# compiled with the space-to-depth stem (the MFU target's row); 4. the 10-crop evaluation
# benchmark; 5. DALI's `mixed` decode and the end-to-end rate from shards, when DALI is importable
# and shards are given (CONVNETS_BENCH_SHARDS=DIR), also with 2 threads beside the torch loader's
# 2 workers. One table at the end; JSON files in OUT_DIR.
# Runs from a source checkout with only torch, Lightning and torchmetrics installed (no install
# needed: src/ goes on PYTHONPATH). Without a GPU it runs the CPU-only parts, small, and says so.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR [core|epoch]}
PART=${2:-core}
case "$PART" in core|epoch) ;; *) echo "gpu_check: part '$PART': expected core or epoch" >&2; exit 2;; esac
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
STATUS=0
step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, keep its log, remember a failure
    local name=$1 limit=$2; shift 2
    echo "== $name"
    if ! timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        echo "   FAILED (exit $?): last lines of $OUT/$name.log:"; tail -n 25 "$OUT/$name.log"; STATUS=1
    else
        tail -n 4 "$OUT/$name.log"
    fi
}

$PY - "$OUT/env.json" <<'PYEOF'
import json, platform, sys, importlib.util
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
for mod in ("pytorch_lightning", "torchmetrics", "nvidia.dali", "numba", "webdataset", "wandb", "jsonargparse"):
    spec = importlib.util.find_spec(mod.split(".")[0]) and importlib.util.find_spec(mod)
    if spec is None:
        info[mod] = None
        continue
    m = __import__(mod, fromlist=["__version__"])
    info[mod] = getattr(m, "__version__", "?")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())))
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(" ".join(f"{k}={v}" for k, v in info.items()))
PYEOF

# The 500 real photos the scale shards repeat: the shared data beside the checkout, or inside it.
photos() {
    for d in "${CONVNETS_SHARED_DATA:-}" ../shared/data shared/data; do
        [ -n "$d" ] && [ -d "$d/imagenet-sample" ] && { echo "$d/imagenet-sample"; return 0; }
    done
    return 1
}

epoch_part() {  # epoch_part SAMPLES VAL_SAMPLES FLAGS...: scale shards, then the epoch and its data path alone
    local samples=$1 val=$2; shift 2
    local scale=${CONVNETS_SCALE_DIR:-/tmp/convnets-scale} src
    # One budget for the three steps (default 450 s: the device call stays under 8 minutes with the
    # set-up above); each step gets its own limit or what is left, whichever is smaller.
    local end=$((SECONDS + ${CONVNETS_EPOCH_BUDGET_S:-450}))
    left() { local l=$((end - SECONDS)); echo $((l < $1 ? l : $1)); }
    if ! src=$(photos); then
        echo "no imagenet-sample folder (set CONVNETS_SHARED_DATA): epoch benchmark skipped"; STATUS=1; return
    fi
    # Expected on 16 cores: ~1-2 min for 1.33 M samples (the writer's tar and hashing work, ~40 GB of
    # writes). Resumable: a rerun on the same machine keeps the finished shards.
    step make_scale_shards "$(left 200)" $PY scripts/make_scale_shards.py "$scale" --from "$src" --samples "$samples" \
        --val-samples "$val" --resize 256 --quality 90
    [ -f "$scale/train/manifest.json" ] || return
    # The training epoch first (the row the targets are about), then the same loader alone.
    step bench_epoch_fit "$(left 300)" $PY -m convnets.cli bench epoch --shards "$scale" --val --test-crops 10 "$@" \
        --json "$OUT/bench_epoch_fit.json"
    if [ $((end - SECONDS)) -lt 30 ]; then
        echo "   epoch budget spent: the data path alone was not measured"; STATUS=1; return
    fi
    step bench_epoch_data_alone "$(left 150)" $PY -m convnets.cli bench epoch --shards "$scale" --data-only "$@" \
        --json "$OUT/bench_epoch_data_alone.json"
}

if [ "$PART" = epoch ]; then
    if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        # alexnet, bf16, NHWC, compiled, space-to-depth stem, batch 2048; 12 of 16 cores for DALI.
        epoch_part 1281167 50000 --arch alexnet --precision bf16-mixed --channels-last --compile --space-to-depth \
            --batch 2048 --num-threads "${CONVNETS_EPOCH_THREADS:-12}"
    else
        echo "no GPU: the epoch benchmark runs small on the CPU (alexnet_small, 64 + 32 images)"
        epoch_part 64 32 --recipe alexnet_small_imagenette --arch alexnet_small --batch 8 --device cpu
    fi
elif ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no GPU: GPU tests and GPU benchmarks skipped; exercising the CPU-only parts"
    step bench_model_cpu 300 $PY -m convnets.cli bench model --arch lenet5 --batch 32 --steps 3 --warmup 1 --rounds 1 \
        --device cpu --json "$OUT/bench_model_cpu.json"
    step bench_eval_cpu 300 $PY -m convnets.cli bench eval --arch lenet5 --batch 16 --crops 5 --steps 2 --warmup 1 --rounds 1 \
        --device cpu --json "$OUT/bench_eval_cpu.json"
else
    step pytest_gpu 240 $PY -m pytest -q -m gpu -p no:cacheprovider tests/gpu
    # The arms alternate in blocks inside one fit, so each arm compiles once whatever the rounds; blocks
    # of ~0.4 s keep the pipeline fill and drain at each block's ends under ~1% of the block.
    for arch in alexnet alexnet2012; do
        for compile in "" "--compile"; do
            tag=${compile:+_compile}
            step "bench_model_${arch}${tag}" 240 $PY -m convnets.cli bench model --arch "$arch" --batch 256 \
                --precision bf16-mixed --channels-last $compile --steps 40 --warmup 5 --rounds 6 \
                --json "$OUT/bench_model_${arch}${tag}.json"
        done
    done
    # issue 8's MFU row: the largest batch, compiled, with the space-to-depth stem
    step bench_model_alexnet_b2048_compile_s2d 240 $PY -m convnets.cli bench model --arch alexnet --batch 2048 \
        --precision bf16-mixed --channels-last --compile --space-to-depth --steps 15 --warmup 5 --rounds 8 \
        --json "$OUT/bench_model_alexnet_b2048_compile_s2d.json"
    step bench_eval_alexnet 180 $PY -m convnets.cli bench eval --arch alexnet --batch 128 --crops 10 \
        --precision bf16-mixed --channels-last --steps 20 --json "$OUT/bench_eval_alexnet.json"
    if $PY -c "import nvidia.dali" 2>/dev/null; then
        if [ -n "${CONVNETS_BENCH_SHARDS:-}" ]; then
            step bench_e2e_alexnet 300 $PY -m convnets.cli bench e2e --data "$CONVNETS_BENCH_SHARDS" --arch alexnet \
                --batch 256 --precision bf16-mixed --channels-last --hw-decoder-load 0.65 --json "$OUT/bench_e2e_alexnet.json"
            # issue 6's "DALI >= 3x the torch backend, 2 CPU threads each": DALI's mixed decoding fed by 2
            # threads (the e2e "data alone" rate) beside the torch loader with 2 workers, same shards, same preset
            step bench_e2e_alexnet_2threads 300 $PY -m convnets.cli bench e2e --data "$CONVNETS_BENCH_SHARDS" --arch alexnet \
                --batch 256 --precision bf16-mixed --channels-last --hw-decoder-load 0.65 --num-threads 2 \
                --json "$OUT/bench_e2e_alexnet_2threads.json"
            step bench_data_torch_2workers 200 $PY -m convnets.cli bench data --shards "$CONVNETS_BENCH_SHARDS" --backend torch \
                --threads 2 --batch 256 --seconds 20 --json "$OUT/bench_data_torch_2workers.json"
        else
            echo "DALI is importable but CONVNETS_BENCH_SHARDS is unset: mixed decode benchmark skipped"
        fi
    else
        echo "DALI is NOT importable here: the mixed (nvJPEG) decode path and end-to-end rate were not measured"
    fi
fi

$PY - "$OUT" <<'PYEOF'
import json, pathlib, sys
from convnets.platform.bench.report import format_eval_table, format_table, format_e2e_table
from convnets.platform.bench.epoch import format_epoch_table
out = pathlib.Path(sys.argv[1])
results = [json.loads(p.read_text()) for p in sorted(out.glob("bench_*.json"))]
tables = []
for kind, fmt in (("model", format_table), ("eval", format_eval_table), ("e2e", format_e2e_table),
                  ("epoch", format_epoch_table)):
    rows = [r for r in results if r.get("bench") == kind]
    if rows:
        tables.append(fmt(rows))
fit = [r for r in results if r.get("bench") == "epoch" and r.get("mode") == "fit"]
alone = [r for r in results if r.get("bench") == "epoch" and r.get("mode") == "data"]
if fit and alone:  # the same shards, the same session: how close training runs to its data path
    tables.append(f"epoch images/s, training / data path alone: {fit[0]['epoch_images_per_s']:.0f} / "
                  f"{alone[0]['epoch_images_per_s']:.0f} = {fit[0]['epoch_images_per_s'] / alone[0]['epoch_images_per_s']:.3f}")
text = "\n\n".join(tables) or "(no benchmark results)"
(out / "summary.md").write_text(text + "\n")
print(text)
PYEOF
[ $STATUS -eq 0 ] && echo "gpu_check: all steps passed" || echo "gpu_check: some steps FAILED (logs in $OUT)"
exit $STATUS
