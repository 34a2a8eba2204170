"""Unpack what a GPU job brought back (benchmarks/device_run.sh) into the repo and print the table lines.

    python benchmarks/collect_device_results.py OUT/bundle.tgz OUT/partial_*.tgz --commit abc1234 --device "NVIDIA H200"

- Benchmark JSON -> benchmarks/reference/bench/.
- A finished run (metrics.json) -> results/reference/gpu/runs/PROFILE/DATASET/CORRUPTION/ARCH/seedS/:
  metrics.json, history.csv, weight_curve.csv, train.log (the logs of all its calls, oldest first) and
  provenance.json (device, commit); its partial checkpoint, if one was committed, is removed. Then
  results/reference/gpu/table1.md (csv, tex, figures) is rebuilt from every run there, beside the paper
  (`mwnet report --models-root results/reference/gpu/runs --results-root results/reference/gpu`).
- An unfinished run with a checkpoint -> results/reference/partial/DATASET/CORRUPTION/ARCH/seedS/
  checkpoint.pt + train.log, which the next job's device_run.sh resumes from.
Prints one markdown line per run: best, final, the paper's value, wall time, images/s, or how far it got.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from mwnet.config import load_params
from mwnet.reference import keep_finished, keep_partial, last_epoch, rebuild_table, text_of
from mwnet.report import read_paper_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archives", type=Path, nargs="+", help="bundle.tgz and partial_*.tgz of one call")
    ap.add_argument("--results", type=Path, default=REPO / "results" / "reference",
                    help="where gpu/ and partial/ go (default: results/reference)")
    ap.add_argument("--bench", type=Path, default=HERE / "reference" / "bench")
    ap.add_argument("--commit", required=True, help="the commit the device ran")
    ap.add_argument("--device", required=True, help="e.g. 'NVIDIA H200'")
    args = ap.parse_args(argv)
    paper_table = read_paper_table(REPO / load_params(REPO / "params").report.paper_table)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for a in args.archives:
            with tarfile.open(a) as tf:
                tf.extractall(root, filter="data")
        for f in sorted((root / "benchmarks" / "out").glob("*.json")):
            args.bench.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, args.bench / f.name)
            print(f"bench: {args.bench / f.name}")
        print("| cell | best | final | paper | wall time | images/s | device | commit |\n"
              "|---|---:|---:|---:|---:|---:|---|---|")
        finished = set()
        for run in sorted(p.with_suffix("") for p in (root / "models").glob("gpu/*/*/*/seed*.log")):
            rel = run.relative_to(root / "models" / "gpu")
            dataset, corruption, arch = rel.parts[:3]
            log = text_of(run.with_suffix(".log"))
            partial = args.results / "partial" / rel
            cell = f"{dataset} {corruption} {arch} {run.name}"
            whole_log = text_of(partial / "train.log") + log  # earlier calls' segments, then this one
            if (run / "metrics.json").is_file():
                profile = json.loads((run / "metrics.json").read_text()).get("profile", "full")
                m = keep_finished(run, whole_log, args.results / "gpu" / "runs" / profile / rel,
                                  {"device": args.device, "commit": args.commit,
                                   "script": "benchmarks/device_run.sh"}, partial)
                finished.add(profile)
                paper = paper_table.get((arch, dataset, corruption))
                print(f"| {cell} | {m['best_acc']:.2f} | {m['final_acc']:.2f} | {paper if paper else '-'} | "
                      f"{m['wall_time_s']:.0f} s | {m['images_per_s']:.0f} | {args.device} | {args.commit} |")
            elif (run / "checkpoint.pt").is_file():
                keep_partial(run, whole_log, partial)
                print(f"| {cell} | unfinished: {last_epoch(log)}, checkpoint -> {partial} |||||||")
            else:
                print(f"| {cell} | unfinished: {last_epoch(log)}, no checkpoint came back |||||||")
    results = args.results.resolve()
    os.chdir(REPO)  # params/ paths (paper table, data) are relative to the repository
    for profile in sorted(finished):  # the table of every GPU run so far, beside the paper
        try:
            print("table: " + rebuild_table(results / "gpu" / "runs",
                                            results / "gpu" if profile == "full" else results / "gpu" / profile, profile))
        except Exception as e:  # the runs are saved either way; say why the table was not
            print(f"table NOT rebuilt ({type(e).__name__}: {e}); the runs are saved", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
