#!/usr/bin/env bash
# The GPU check of issue 29, in one call of under 10 minutes on one H200 (docs/gpu.md):
#   1. the CUDA-marked tests (tests/test_cuda.py);
#   2. short trainings with --device cuda (resnet50 128 px, efficientnet_lite0 160 px) on a
#      synthetic CelebA-format set, eval on CUDA, the run loaded and evaluated on the CPU;
#   3. torchrun --standalone --nproc_per_node=1 (NCCL) on the GPU;
#   4. prediction on the GPU against the CPU (benchmarks/gpu_predict.py);
#   5. benchmarks/bench_train.py --device cuda (as many rows as the time left allows).
# Each step has its own time limit and the script goes on when one fails; a step is skipped
# when the total would pass BUDGET seconds. Writes, under $OUT (at most 8 files come back):
#   gpu_check.md   the tables and each step's status;
#   gpu_check.log  everything printed;
#   gpu_check_files.tar.gz  the run directories' config.json, history.csv, metrics, each
#                  step's log, the tests' junit XML (re-packed after every step).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu      # a dry run of the same steps on the CPU, tiny
#
# The device machine has no network: it runs the repository from src/ with the image's own
# python3 (torch, timm, onnx, onnxruntime, typer, pandas... are there; KINDS.md), installing
# nothing. onnxruntime-gpu is not there and is too large to carry (> 64 MiB), so the ONNX CUDA
# rows and test skip with their reason unless a wheel is carried in .whl/.
set -uo pipefail

CPU=0
[[ "${1:-}" == "--cpu" ]] && CPU=1
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT_DIR" || exit 1
OUT="${OUT:-/tmp/faceattr-gpu-check-out}"
mkdir -p "$OUT"
W="$(mktemp -d /tmp/faceattr-gpu-check.XXXXXX)"
mkdir -p "$W/logs" "$W/files"
BUDGET="${BUDGET:-540}"   # seconds: leave a minute of the 600-s call for the transfers
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT_DIR/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
MD="$OUT/gpu_check.md"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

if [[ $CPU == 1 ]]; then
  DEV=cpu; N_TRAIN=400; N_EVAL=64; EPOCHS=1; BATCH=32; BENCH_IMAGES=128
  BIG_ARCH=celebnet; SMALL_ARCH=celebnet; BIG_PX=64; SMALL_PX=48
  export FACEATTR_CUDA_TESTS_ON_CPU=1
else
  DEV=cuda; N_TRAIN=20000; N_EVAL=1000; EPOCHS=3; BATCH=256; BENCH_IMAGES=8192
  BIG_ARCH=resnet50; SMALL_ARCH=efficientnet_lite0; BIG_PX=128; SMALL_PX=160
fi

echo "# faceattr GPU check ($(date -u +%FT%TZ), device $DEV)" > "$MD"
pack() { tar -czf "$OUT/gpu_check_files.tar.gz" -C "$W" logs files 2>/dev/null || true; }
left() { echo $((BUDGET - SECONDS)); }
# step NAME LIMIT_S COMMAND...: run with a time limit, log to logs/NAME.log, note the status.
step() {
  local name="$1" limit="$2"; shift 2
  if (( $(left) < 20 )); then
    echo "- $name: SKIPPED (time budget spent at ${SECONDS}s)" >> "$MD"; return 0
  fi
  (( limit > $(left) )) && limit=$(left)
  echo "=== $name (limit ${limit}s, at ${SECONDS}s)"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" > >(tee "$W/logs/$name.log") 2>&1
  rc=$?
  echo "- $name: $([[ $rc == 0 ]] && echo ok || echo "FAILED rc=$rc") ($((SECONDS - t0)) s)" >> "$MD"
  pack
  return $rc
}

{
  echo; echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  "$PY" -c "import sys, torch, onnxruntime as o; print('python', sys.version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available(), '| onnxruntime', o.__version__, o.get_available_providers())"
  nproc
  echo '```'; echo; echo "## Steps"; echo
} >> "$MD" 2>&1
# A carried onnxruntime-gpu wheel (see the header) replaces the image's onnxruntime in /tmp/site.
if compgen -G ".whl/onnxruntime_gpu-*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
"$PY" -c "import faceattr, torch, timm, typer, pandas, onnx, onnxruntime" \
  || { echo "- imports: FAILED (see gpu_check.log)" >> "$MD"; pack; exit 1; }

# 1. The CUDA-marked tests.
step cuda_tests 200 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider \
  -o addopts="" -rs --junitxml="$W/files/cuda_tests.xml"
{ echo; echo '```'; tail -n 25 "$W/logs/cuda_tests.log"; echo '```'; echo; } >> "$MD"

# 2. Short trainings on a synthetic CelebA-format set; eval on the device and on the CPU.
D="$W/data"
step data 120 "$PY" -c "
from faceattr.data.synthetic import write_synthetic_celeba
write_synthetic_celeba('$D', n_train=$N_TRAIN, n_valid=$N_EVAL, n_test=$N_EVAL)"
step prepare 120 bash -c "$PY -m faceattr data prepare celeba --root $D --img-size $BIG_PX --workers 16 \
  && $PY -m faceattr data prepare celeba --root $D --img-size $SMALL_PX --workers 16"

train_and_check() {  # ARCH PX
  local arch="$1" px="$2" run="$W/runs/$1-$2"
  step "train_${arch}_${px}" 150 "$PY" -m faceattr train --root "$D" --arch "$arch" \
    --img-size "$px" --epochs "$EPOCHS" --batch-size "$BATCH" --device "$DEV" --out "$run" --json \
    || return 0
  step "eval_${arch}_${DEV}" 60 "$PY" -m faceattr eval "$run" --root "$D" --split test \
    --device "$DEV" --json
  cp "$run/metrics-test.json" "$run/metrics-test-$DEV.json" 2>/dev/null
  # Loadable on the CPU: eval again with CUDA hidden.
  step "eval_${arch}_cpu_only" 90 env CUDA_VISIBLE_DEVICES= "$PY" -m faceattr eval "$run" \
    --root "$D" --split test --device cpu --json
  mkdir -p "$W/files/$arch-$px"
  cp "$run"/{config.json,history.csv,metrics-*.json} "$W/files/$arch-$px/" 2>/dev/null
  "$PY" - "$run" "$DEV" >> "$MD" <<'EOF'
import csv, json, sys
from pathlib import Path
run, dev = Path(sys.argv[1]), sys.argv[2]
rows = list(csv.DictReader(open(run / "history.csv")))
print(f"\n### {run.name}: {len(rows)} epochs on {dev}\n")
print("| epoch | train loss | val mean acc. | img/s | s |\n|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['epoch']} | {float(r['train_loss']):.4f} | {float(r['val_mean_accuracy']):.4f} "
          f"| {float(r['images_per_second']):.0f} | {float(r['seconds']):.1f} |")
try:
    a = json.loads((run / f"metrics-test-{dev}.json").read_text())["mean_accuracy"]
    b = json.loads((run / "metrics-test.json").read_text())["mean_accuracy"]
    print(f"\ntest mean accuracy: {dev} {a:.5f}, CPU {b:.5f}, difference {abs(a - b):.2e}")
except Exception as e:  # noqa: BLE001
    print(f"\n(test metrics missing: {e})")
EOF
  pack
}
train_and_check "$BIG_ARCH" "$BIG_PX"
train_and_check "$SMALL_ARCH" "$SMALL_PX"

# 3. torchrun with one process: NCCL on CUDA (gloo on the CPU), rank 0 writes the run.
step torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m faceattr \
  train --root "$D" --arch celebnet --img-size 64 --epochs 2 --batch-size "$BATCH" \
  --device "$DEV" --out "$W/runs/torchrun" --json
grep -i -m3 "nccl\|gloo\|world\|process" "$W/logs/torchrun.log" | sed 's/^/    /' >> "$MD"
cp "$W/runs/torchrun/config.json" "$W/files/torchrun-config.json" 2>/dev/null

# 4. Prediction: torch and ONNX, GPU against CPU, on aligned crops (the default model).
step predict 150 "$PY" benchmarks/gpu_predict.py --root "$D" --images "$N_EVAL" --repeat 2 \
  --devices "$DEV,cpu" && grep '^|\|^###' "$W/logs/predict.log" >> "$MD"
step predict_cli 60 "$PY" -m faceattr predict "$D/img_align_celeba/000001.jpg" \
  --model "$W/runs/$BIG_ARCH-$BIG_PX" --backend torch --device "$DEV" --no-detect --json

# 5. The training benchmark (fit() against the bare loop, the data path), most important first.
bench() {  # ARCHS SIZES [--compile]
  local name="bench_${1//,/_}_${2//,/_}${3:+_compile}"
  step "$name" 240 bash -c "cd benchmarks && $PY bench_train.py --archs $1 --sizes $2 \
    --device $DEV --images $BENCH_IMAGES --batch-size $BATCH --no-before ${3:-}"
  grep '^|\|^###\|^GPU' "$W/logs/$name.log" >> "$MD" 2>/dev/null
}
if [[ $CPU == 1 ]]; then
  bench celebnet 64
else
  bench resnet50 128 --compile
  bench efficientnet_lite0 160
  bench celebnet 128
  bench resnet50 224
  bench efficientnet_lite0 128,224
  bench resnet50 160
fi

echo >> "$MD"; echo "Total: ${SECONDS} s." >> "$MD"
pack
cat "$MD"
