"""Stamps of the pipeline's jobs (see workflow/rules/common.smk): called from the rules' shell commands.

    stamp.py begin STAMP [--spec JSON]
        Remove the stamps, markers and logs of other specifications (spec-*) from STAMP's folder and
        print "--restart" when there were any (that folder's checkpoint belongs to other parameters).
        With --spec, write STAMP's ".started" marker holding the specification.
    stamp.py finish STAMP --spec JSON [--require FILE ...]
        Check that every FILE exists, then write STAMP (atomically) and remove the ".started" marker.
    stamp.py progress PLAN
        Print one line to stderr: runs of the grid done / left and the estimated time left, from the
        plan the pipeline wrote before its first job (mwnet.plan.write_progress_file).

Standard library only, so it starts fast.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _prefix(stamp: Path) -> str:
    return stamp.name[: -len(".json")] + "."  # spec-<hash>.


def begin(stamp: Path, spec: str | None) -> bool:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    foreign = [f for f in stamp.parent.glob("spec-*") if not f.name.startswith(_prefix(stamp))]
    for f in foreign:
        f.unlink()
    if spec is not None:
        stamp.with_suffix(".started").write_text(spec + "\n")
    return bool(foreign)


def finish(stamp: Path, spec: str, required: list[str]) -> None:
    missing = [f for f in required if not Path(f).exists()]
    if missing:
        sys.exit(f"stamp.py: the job ended without writing {missing}; no stamp written")
    text = json.dumps(json.loads(spec), indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{stamp.name}.", dir=stamp.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, stamp)
    stamp.with_suffix(".started").unlink(missing_ok=True)


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress(plan_file: Path) -> None:
    try:
        plan = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        return  # no plan (e.g. Snakemake started without onstart): no progress line, nothing fails
    runs = plan["runs"]
    left = [r for r in runs if not Path(r["stamp"]).exists()]
    line = f"grid ({plan['profile']}): {len(runs) - len(left)} of {len(runs)} runs done, {len(left)} to go"
    est = [r["estimate_s"] for r in left]
    if est and None not in est:
        at_once = max(1, min(plan["at_once"], len(est)))
        line += f", about {_human(sum(e + plan['start_up_s'] for e in est) / at_once)} left (estimate)"
    print(line, file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("begin")
    b.add_argument("stamp", type=Path)
    b.add_argument("--spec")
    f = sub.add_parser("finish")
    f.add_argument("stamp", type=Path)
    f.add_argument("--spec", required=True)
    f.add_argument("--require", nargs="*", default=[])
    pr = sub.add_parser("progress")
    pr.add_argument("plan", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "progress":
        progress(args.plan)
    elif args.cmd == "begin":
        if begin(args.stamp, args.spec):
            print("--restart")
    else:
        finish(args.stamp, args.spec, args.require)
    return 0


if __name__ == "__main__":
    sys.exit(main())
