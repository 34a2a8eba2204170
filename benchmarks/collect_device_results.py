"""Unpack what a GPU call brought back (benchmarks/device_run.sh) into the repo and print the table lines.

    python benchmarks/collect_device_results.py OUT/bundle.tgz OUT/partial_*.tgz --commit abc1234 --device "NVIDIA H200"

- Benchmark JSON -> benchmarks/reference/bench/.
- A finished run (metrics.json) -> results/reference/gpu/runs/PROFILE/DATASET/CORRUPTION/ARCH/seedS/:
  metrics.json, history.csv, weight_curve.csv, train.log (the logs of all its calls, oldest first) and
  provenance.json (device, commit); its partial checkpoint, if one was committed, is removed. Then
  results/reference/gpu/table1.md (csv, tex, figures) is rebuilt from every run there, beside the paper
  (`mwnet report --models-root results/reference/gpu/runs --results-root results/reference/gpu`).
- An unfinished run with a checkpoint -> results/reference/partial/DATASET/CORRUPTION/ARCH/seedS/
  checkpoint.pt + train.log, which the next lent session's device_run.sh resumes from.
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
from mwnet.report import read_paper_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUN_FILES = ("metrics.json", "history.csv", "weight_curve.csv")


def _last_epoch(log: Path) -> str:
    lines = [l for l in log.read_text().splitlines() if l.startswith("epoch ")] if log.is_file() else []
    return lines[-1].split("|")[0].strip() if lines else "no epoch finished"


def _append_log(dst: Path, src: Path) -> None:
    if src.is_file():
        with open(dst, "a") as f:
            f.write(src.read_text())


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
            log = run.with_suffix(".log")
            partial = args.results / "partial" / rel
            cell = f"{dataset} {corruption} {arch} {run.name}"
            if (run / "metrics.json").is_file():
                m = json.loads((run / "metrics.json").read_text())
                out = args.results / "gpu" / "runs" / m.get("profile", "full") / rel
                out.mkdir(parents=True, exist_ok=True)
                for name in RUN_FILES:
                    shutil.copy(run / name, out / name)
                (out / "train.log").unlink(missing_ok=True)
                _append_log(out / "train.log", partial / "train.log")
                _append_log(out / "train.log", log)
                (out / "provenance.json").write_text(json.dumps(
                    {"device": args.device, "commit": args.commit, "script": "benchmarks/device_run.sh"}, indent=1) + "\n")
                shutil.rmtree(partial, ignore_errors=True)
                finished.add(m.get("profile", "full"))
                paper = paper_table.get((arch, dataset, corruption))
                print(f"| {cell} | {m['best_acc']:.2f} | {m['final_acc']:.2f} | {paper if paper else '-'} | "
                      f"{m['wall_time_s']:.0f} s | {m['images_per_s']:.0f} | {args.device} | {args.commit} |")
            elif (run / "checkpoint.pt").is_file():
                partial.mkdir(parents=True, exist_ok=True)
                shutil.copy(run / "checkpoint.pt", partial / "checkpoint.pt")
                _append_log(partial / "train.log", log)
                print(f"| {cell} | unfinished: {_last_epoch(log)}, checkpoint -> {partial} |||||||")
            else:
                print(f"| {cell} | unfinished: {_last_epoch(log)}, no checkpoint came back |||||||")
    results = args.results.resolve()
    os.chdir(REPO)  # params/ paths (paper table, data) are relative to the repository
    for profile in sorted(finished):  # the table of every GPU run so far, beside the paper
        from mwnet.report import with_roots, write_report

        params = with_roots(load_params("params", profile=profile), results / "gpu" / "runs",
                            results / "gpu" if profile == "full" else results / "gpu" / profile)
        try:
            cells, _ = write_report(params)
            print(f"table: {params.report.results_root}/table1.md ({sum(len(c.runs) for c in cells)} runs)")
        except Exception as e:  # the runs are saved either way; say why the table was not
            print(f"table NOT rebuilt ({type(e).__name__}: {e}); the runs are saved", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
