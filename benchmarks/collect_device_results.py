"""Unpack a GPU session's bundle.tgz (benchmarks/device_run.sh) into the repo and print RESULTS.md lines.

    python benchmarks/collect_device_results.py /work/.device/.../bundle.tgz --commit abc1234 --device "H200"

Finished runs (those with metrics.json) go to benchmarks/reference/DATASET/CORRUPTION/ARCH/ (metrics.json,
history.csv, weight_curve.csv, the run's log). Benchmark JSON files go to benchmarks/reference/bench/. A
run cut off before its end is reported as such, with its last epoch, and nothing of it is copied.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from mwnet.config import load_params
from mwnet.report import read_paper_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--dest", type=Path, default=HERE / "reference")
    ap.add_argument("--commit", required=True, help="the commit the device ran")
    ap.add_argument("--device", required=True, help="e.g. 'NVIDIA H200'")
    args = ap.parse_args(argv)
    paper_table = read_paper_table(REPO / load_params(REPO / "params").report.paper_table)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.bundle) as tf:
            tf.extractall(tmp, filter="data")
        root = Path(tmp)
        for f in sorted((root / "benchmarks" / "out").glob("*.json")):
            (args.dest / "bench").mkdir(parents=True, exist_ok=True)
            shutil.copy(f, args.dest / "bench" / f.name)
            print(f"bench: {f.name}")
        print("| cell | best | final | paper | wall time | images/s | device | commit |\n|---|---:|---:|---:|---:|---:|---|---|")
        for log in sorted((root / "models").glob("*/*/*/*/seed*.log")):
            run = log.with_suffix("")
            dataset, corruption, arch = run.parts[-4], run.parts[-3], run.parts[-2]
            cell = f"{dataset} {corruption} {arch} {run.name}"
            if not (run / "metrics.json").is_file():
                last = [line for line in log.read_text().splitlines() if line.startswith("epoch ")]
                print(f"| {cell} | unfinished: {last[-1].split('|')[0].strip() if last else 'no epoch done'} |||||||")
                continue
            m = json.loads((run / "metrics.json").read_text())
            out = args.dest / dataset / corruption / arch / run.name
            out.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.json", "history.csv", "weight_curve.csv"):
                shutil.copy(run / name, out / name)
            shutil.copy(log, out / "train.log")
            paper = paper_table.get((arch, dataset, corruption))
            print(f"| {cell} | {m['best_acc']:.2f} | {m['final_acc']:.2f} | {paper if paper else '-'} | "
                  f"{m['wall_time_s']:.0f} s | {m['images_per_s']:.0f} | {args.device} | {args.commit} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
