"""Copy a finished profile's results into the repo as reference results (git-tracked, no model weights).

    python workflow/scripts/export_reference.py --profile mini [--params params] [--out results/reference/mini]
                                                [--note "machine, command, ..."]

Writes OUT/table1.md, table1.csv, metrics.json, figures/*.png, and per run OUT/runs/DATASET/CORRUPTION/
ARCH/seedS/{metrics.json, history.csv, weight_curve.csv, train.log}, plus OUT/RUN.md: the commit, the
machine, the wall time of every run and the note. Run `mwnet report` first (the pipeline does).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--params", default="params")
    ap.add_argument("--out", type=Path, default=None, help="default: results/reference/PROFILE")
    ap.add_argument("--note", default="", help="free text for RUN.md (how it was run)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from mwnet import paths
    from mwnet.config import load_params

    p = load_params(args.params, profile=args.profile)
    out = args.out or REPO / "results" / "reference" / p.profile
    res = Path(p.report.results_root)
    if not (res / "table1.md").exists() or f"Profile: {p.profile}." not in (res / "table1.md").read_text():
        sys.exit(f"{res}/table1.md is not the {p.profile} profile's table: run mwnet report --profile {p.profile}")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name in ("table1.md", "table1.csv", "table1.tex", "metrics.json"):
        shutil.copy(res / name, out / name)
    for fig in (res / "figures").glob("*.png"):
        shutil.copy(fig, out / "figures" / fig.name)
    rows = []
    for dataset, corruption, arch, seed in p.cells():
        d = paths.run_dir(p.report.models_root, p.profile, dataset, corruption, arch, seed)
        if not (d / "metrics.json").exists():
            rows.append(f"| {dataset} | {corruption} | {arch} | {seed} | not finished | | |")
            continue
        dst = out / "runs" / dataset / corruption / arch / f"seed{seed}"
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "history.csv", "weight_curve.csv"):
            shutil.copy(d / name, dst / name)
        logs = sorted(d.glob("spec-*.log"))
        if logs:
            shutil.copy(logs[-1], dst / "train.log")
        m = json.loads((d / "metrics.json").read_text())
        rows.append(f"| {dataset} | {corruption} | {arch} | {seed} | {m['best_acc']:.2f} / {m['final_acc']:.2f} | "
                    f"{m['wall_time_s'] / 60:.1f} | {m.get('device', '')} |")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    (out / "RUN.md").write_text("\n".join([
        f"# Reference results: profile {p.profile}", "",
        f"- exported at commit {commit} by workflow/scripts/export_reference.py",
        f"- machine: {platform.node()}, {cpu}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        f"- {args.note}" if args.note else "",
        "", "| dataset | corruption | run | seed | best / final test acc (%) | train+eval time (min) | device |",
        "|---|---|---|---|---|---|---|", *rows, "",
    ]))
    print(f"reference results of profile {p.profile} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
