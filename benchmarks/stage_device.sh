#!/usr/bin/env bash
# Prepares, on a CPU machine with the raw data, what a time-boxed GPU job brings along (benchmarks/README.md,
# "A time-boxed GPU job"): pydantic wheels for the GPU machine's Python, and one packed split per dataset
# (real CIFAR, imbalance 100, seed 1). All of it is git-ignored. About 2 minutes.
#
#   bash benchmarks/stage_device.sh [CORRUPTION]      (default imbalance_100)
#
# Leaves .whl/ (9 MiB), .pack/cifar10-CORRUPTION-seed1/ (what job 1 brings) and
# .pack-next/cifar100-CORRUPTION-seed1/ (for job 2: move it into .pack/ in place of the first).
set -euo pipefail
cd "$(dirname "$0")/.."
corruption="${1:-imbalance_100}"
MWNET="${MWNET:-.venv/bin/mwnet}"
export MLFLOW_DISABLE_TELEMETRY=true

if [ ! -d .whl ] || [ "$(ls .whl | wc -l)" -lt 8 ]; then
  for v in 3.10 3.11 3.12 3.13; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
      --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
      typing-inspection==0.4.5 typing_extensions==4.16.0 2>&1 | grep -v "is ignored" || true
  done
fi
[ -f params/local.yaml ] || python3 workflow/scripts/offline_data.py
rm -rf .pack .pack-next
for d in cifar10 cifar100; do
  "$MWNET" data fetch --dataset "$d"
  "$MWNET" data corrupt --dataset "$d" --corruption "$corruption" --seed 1
  dest=.pack; [ "$d" = cifar100 ] && dest=.pack-next
  "$MWNET" data pack --dataset "$d" --corruption "$corruption" --seed 1 --out "$dest/$d-$corruption-seed1"
done
echo
echo "job 1 brings: .whl ($(du -sh .whl | cut -f1)), .pack ($(du -sh .pack | cut -f1)); tracked tree $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1)"
echo "job 2 brings: .pack after: rm -rf .pack && mv .pack-next .pack ($(du -sh .pack-next | cut -f1))"
