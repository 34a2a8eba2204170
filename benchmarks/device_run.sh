#!/usr/bin/env bash
# A time-boxed run on a GPU machine without internet or raw data (a GPU rented by the hour, a cluster
# job with a wall-time limit), from the repository root. It needs a python3 with torch, torchvision,
# numpy, Pillow and yaml; pydantic comes from .whl/ when missing (`setup`); mlflow, dvc and snakemake are
# not needed (runs use --no-tracking). benchmarks/README.md ("A time-boxed GPU job") says what to bring.
#
#   bash benchmarks/device_run.sh STAGE [STAGE ...]
#
# stages, run in the order given, each logging to $OUT/log.txt:
#   setup      install pydantic from the wheels brought along (.whl/) into /tmp/site when it is missing
#   unpack     `mwnet data unpack` every pack brought along (.pack/*/, from `mwnet data pack`) into data/corrupted
#   smoke      the step/loading/slot tests (their CUDA-only ones run here), then a quick-profile run on
#              CUDA on synthetic data: a broken CUDA path fails here, in about a minute, and the stages
#              after it are skipped (the bundle still comes back, with the traceback in log.txt)
#   bench      bench_step.py fp32 + bf16 (+ ResNet-32 as one CUDA graph, checked against eager steps),
#              official_style.py, bench_packing.py (1, 4, 8 processes)
#   train:END:K:RUN,RUN,...
#              full-protocol runs (seed 1, tracking off), RUN = DATASET/CORRUPTION/ARCH, K at a time
#              (K=auto: the best process count bench_packing measured, else 4), each stopped by SIGTERM
#              END seconds after this script started (its last finished epoch is checkpointed). A run
#              whose checkpoint is committed under results/reference/partial/ resumes from it. No run
#              starts with less than MIN_RUN_S (60) seconds left. TRAIN_ARGS adds flags (CPU dry run:
#              "--profile mini --threads 1").
# At the end: $OUT/bundle.tgz (benchmark JSON; per run metrics.json, history.csv, weight_curve.csv, log)
# and $OUT/partial_N.tgz (checkpoints of unfinished runs, CKPTS_PER_FILE (3) per file, for a machine
# that returns only a few files).
# Options (environment): OUT (/tmp/out), PYTHON, MIN_RUN_S, TRAIN_ARGS, CKPTS_PER_FILE, BENCH_REPS.
set -uo pipefail
T0=$(date +%s)
OUT="${OUT:-/tmp/out}"
PY="${PYTHON:-python3}"
MIN_RUN_S="${MIN_RUN_S:-60}"
CKPTS_PER_FILE="${CKPTS_PER_FILE:-3}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
mkdir -p "$OUT" benchmarks/out
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
LOG="$OUT/log.txt"
say() { echo "== [$(date +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
mwnet() { "$PY" -c 'import sys; from mwnet.cli import main; sys.exit(main())' "$@"; }

# one training run, cut off at the absolute time $2 (epoch seconds); resumes from a committed checkpoint
train_one() {
  local run="$1" end="$2" dataset corruption arch out left partial
  IFS=/ read -r dataset corruption arch <<< "$run"
  out="models/gpu/$dataset/$corruption/$arch/seed1"
  partial="results/reference/partial/$dataset/$corruption/$arch/seed1/checkpoint.pt"
  left=$(( end - $(date +%s) ))
  if [ "$left" -lt "$MIN_RUN_S" ]; then say "skip $run: ${left}s left"; return; fi
  mkdir -p "$out"
  if [ -f "$partial" ] && [ ! -f "$out/checkpoint.pt" ]; then cp "$partial" "$out/checkpoint.pt"; fi
  say "start $run (${left}s left)"
  timeout --signal=TERM --kill-after=20 "$left" "$PY" -c 'import sys; from mwnet.cli import main; sys.exit(main())' \
    train --dataset "$dataset" --corruption "$corruption" --arch "$arch" --seed 1 --no-tracking --out "$out" \
    ${TRAIN_ARGS:-} > "$out.log" 2>&1  # this call's log; collect_device_results.py keeps them all
  say "end $run (exit $?): $(grep '^epoch' "$out.log" | tail -1 | cut -c1-100)"
}
export -f train_one say
export T0 LOG PY MIN_RUN_S TRAIN_ARGS

for stage in "$@"; do
  say "stage $stage"
  case "$stage" in
    setup)
      # .whl holds pydantic_core for CPython 3.10-3.13: pip picks the one of this Python
      "$PY" -c 'import pydantic' 2>/dev/null || \
        "$PY" -m pip install -q --no-index --find-links .whl --no-compile --no-cache-dir --target /tmp/site pydantic 2>&1 | tail -2
      "$PY" -c "import torch, pydantic; print('torch', torch.__version__, 'pydantic', pydantic.VERSION, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" ;;
    unpack)
      for p in .pack/*/; do mwnet data unpack "$p" 2>&1 | tail -1 | tee -a "$LOG"; done ;;
    smoke)
      "$PY" -m pytest -q -p no:cacheprovider tests/test_meta_step.py tests/test_data_loading.py tests/test_gpu_slots.py 2>&1 | tail -3 | tee -a "$LOG"
      rm -rf /tmp/smoke && mkdir -p /tmp/smoke
      mwnet data synth --dataset cifar10 --out /tmp/smoke/src --train-per-class 120 --test-per-class 20 2>&1 | tail -1
      printf 'data:\n  raw_root: /tmp/smoke/raw\n  corrupted_root: /tmp/smoke/corrupted\n  sources:\n    cifar10: {location: /tmp/smoke/src, allow_unverified: true}\n' > /tmp/smoke/local.yaml
      cp -r params /tmp/smoke/params && cp /tmp/smoke/local.yaml /tmp/smoke/params/local.yaml
      mwnet data fetch --dataset cifar10 --params /tmp/smoke/params --profile quick 2>&1 | tail -1
      mwnet data corrupt --dataset cifar10 --corruption imbalance_100 --seed 1 --params /tmp/smoke/params --profile quick 2>&1 | tail -1
      mwnet train --dataset cifar10 --corruption imbalance_100 --arch 1-100-1 --seed 1 --profile quick \
        --params /tmp/smoke/params --device "${SMOKE_DEVICE:-cuda}" --no-tracking --out /tmp/smoke/run > /tmp/smoke/train.log 2>&1
      tail -2 /tmp/smoke/train.log | tee -a "$LOG"
      if [ ! -f /tmp/smoke/run/metrics.json ]; then  # a broken CUDA path: stop here, fix it on CPU, rerun
        tail -25 /tmp/smoke/train.log >> "$LOG"; say "smoke FAILED: the later stages are skipped"; break
      fi ;;
    bench)
      "$PY" benchmarks/bench_step.py --precision fp32 --reps "${BENCH_REPS:-20}" ${BENCH_ARGS:-} --json benchmarks/out/bench_fp32.json 2>&1 | tee -a "$LOG"
      "$PY" benchmarks/bench_step.py --precision bf16 --reps "${BENCH_REPS:-20}" ${BENCH_ARGS:-} --json benchmarks/out/bench_bf16.json 2>&1 | tee -a "$LOG"
      "$PY" benchmarks/bench_step.py --precision fp32 --archs resnet32 --methods plain,mwnet-jvp --cuda-graph \
        --reps "${BENCH_REPS:-20}" ${BENCH_ARGS:-} --json benchmarks/out/bench_graph.json 2>&1 | tee -a "$LOG"
      "$PY" benchmarks/official_style.py --steps "${BENCH_REPS:-20}" ${OFFICIAL_ARGS:-} --json benchmarks/out/official_style.json 2>&1 | tee -a "$LOG"
      "$PY" benchmarks/bench_packing.py --seconds "${PACK_SECONDS:-10}" ${PACK_ARGS:-} --json benchmarks/out/packing.json 2>&1 | tee -a "$LOG" ;;
    train:*)
      IFS=: read -r _ end k runs <<< "$stage"
      if [ "$k" = auto ]; then
        k=$("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["rows"]; print(max(r, key=lambda x: x["steps_per_s_total"])["procs"])' \
            benchmarks/out/packing.json 2>/dev/null || echo 4)
      fi
      say "runs $runs, $k at a time, until +${end}s"
      tr , '\n' <<< "$runs" | xargs -P "$k" -I{} bash -c 'train_one "$1" "$2"' _ {} $(( T0 + end ))
      nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>&1 | tee -a "$LOG" ;;
    *) say "unknown stage $stage"; exit 2 ;;
  esac
done
tar -czf "$OUT/bundle.tgz" --exclude='*.pt' benchmarks/out $(ls -d models 2>/dev/null) 2>/dev/null
i=0
find models -name checkpoint.pt 2>/dev/null | sort | xargs -r -n "$CKPTS_PER_FILE" | while read -r group; do
  i=$((i + 1)); tar -czf "$OUT/partial_$i.tgz" $group $(for c in $group; do echo "${c%/checkpoint.pt}.log"; done)
done
say "done: $(ls "$OUT" | tr '\n' ' ')"
