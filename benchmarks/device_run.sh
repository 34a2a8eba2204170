#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), from the repository root: python3 there has torch,
# torchvision, numpy, Pillow, matplotlib, tqdm and yaml, but not pydantic, mlflow, dvc or snakemake, and
# reaches no registry. See benchmarks/README.md ("On a lent GPU") for how the bundle is staged here.
#
#   bash benchmarks/device_run.sh STAGE [STAGE ...]
#
# stages (run in the order given; each one logs to $OUT/log.txt):
#   setup            install the carried pydantic wheels (.whl/) into /tmp/site
#   data_a | data_b  copy the carried half of the CIFAR-10 WebP copy (.cifar_a/, .cifar_b/) to /tmp/cifarsrc;
#                    data_b then rebuilds torchvision's layout (content-checked) and runs `mwnet data fetch`
#   smoke            the step and loading tests (their CUDA-only ones run here), then a quick-profile run on
#                    CUDA on synthetic data: fails fast if a CUDA path breaks
#   bench            benchmarks/bench_step.py fp32 + bf16 and benchmarks/official_style.py
#   train:CORR:ARCH:SECONDS   `mwnet train` on cifar10 (seed 1, tracking off) for at most SECONDS; a run cut
#                    off resumes from its checkpoint in the next call while the machine is warm
# At the end everything under models/ and benchmarks/out/ goes back as $OUT/bundle.tgz (<= 8 files come back).
set -uo pipefail
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT" benchmarks/out
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
LOG="$OUT/log.txt"
say() { echo "== [$(date +%T)] $*" | tee -a "$LOG"; }
mwnet() { python3 -c 'import sys; from mwnet.cli import main; sys.exit(main())' "$@"; }

for stage in "$@"; do
  say "stage $stage"
  case "$stage" in
    setup)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
      python3 -c "import torch, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee -a "$LOG"
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG" ;;
    data_a|data_b)
      half=".cifar_${stage#data_}"
      mkdir -p /tmp/cifarsrc && cp "$half"/* /tmp/cifarsrc/ && ls /tmp/cifarsrc | tee -a "$LOG"
      if [ "$stage" = data_b ]; then
        python3 /tmp/cifarsrc/export.py /tmp/c10 2>&1 | tee -a "$LOG"
        mwnet data fetch --dataset cifar10 --source /tmp/c10 2>&1 | tee -a "$LOG"
      fi ;;
    smoke)
      python3 -m pytest -q -p no:cacheprovider tests/test_meta_step.py tests/test_data_loading.py 2>&1 | tail -3 | tee -a "$LOG"
      rm -rf /tmp/smoke && mkdir -p /tmp/smoke
      mwnet data synth --dataset cifar10 --out /tmp/smoke/src --train-per-class 120 --test-per-class 20 2>&1 | tail -1
      printf 'data:\n  raw_root: /tmp/smoke/raw\n  corrupted_root: /tmp/smoke/corrupted\n  sources:\n    cifar10: {location: /tmp/smoke/src, allow_unverified: true}\n' > params/local.yaml
      mwnet data fetch --dataset cifar10 --allow-unverified --profile quick 2>&1 | tail -1
      mwnet data corrupt --dataset cifar10 --corruption imbalance_100 --seed 1 --profile quick 2>&1 | tail -1
      mwnet train --dataset cifar10 --corruption imbalance_100 --arch 1-100-1 --seed 1 --profile quick --device "${SMOKE_DEVICE:-cuda}" \
        --no-tracking --out /tmp/smoke/run 2>&1 | tail -3 | tee -a "$LOG"
      rm -f params/local.yaml ;;
    bench)
      python3 benchmarks/bench_step.py --precision fp32 --json benchmarks/out/bench_fp32.json 2>&1 | tee -a "$LOG"
      python3 benchmarks/bench_step.py --precision bf16 --json benchmarks/out/bench_bf16.json 2>&1 | tee -a "$LOG"
      python3 benchmarks/official_style.py --json benchmarks/out/official_style.json 2>&1 | tee -a "$LOG" ;;
    train:*)
      IFS=: read -r _ corr arch secs <<< "$stage"
      out="models/gpu/cifar10/$corr/$arch/seed1"
      mkdir -p "$(dirname "$out")"
      timeout --signal=TERM "$secs" python3 -c 'import sys; from mwnet.cli import main; sys.exit(main())' \
        train --dataset cifar10 --corruption "$corr" --arch "$arch" --seed 1 --no-tracking --out "$out" \
        > "$out.log" 2>&1 || true
      tail -4 "$out.log" | tee -a "$LOG"
      nvidia-smi --query-gpu=memory.used --format=csv,noheader | tee -a "$LOG" ;;
    *) say "unknown stage $stage"; exit 2 ;;
  esac
done
tar -czf "$OUT/bundle.tgz" --exclude='*.pt' benchmarks/out $(ls -d models 2>/dev/null) 2>/dev/null
say "done"
