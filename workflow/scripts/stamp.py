"""Stamps of the pipeline's jobs (see workflow/rules/common.smk): called from the rules' shell commands.

    stamp.py begin STAMP [--spec JSON]
        Remove the stamps, markers and logs of other specifications (spec-*) from STAMP's folder and
        print "--restart" when there were any (that folder's checkpoint belongs to other parameters).
        With --spec, write STAMP's ".started" marker holding the specification.
    stamp.py finish STAMP --spec JSON [--require FILE ...]
        Check that every FILE exists, then write STAMP (atomically) and remove the ".started" marker.

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
    args = ap.parse_args(argv)
    if args.cmd == "begin":
        if begin(args.stamp, args.spec):
            print("--restart")
    else:
        finish(args.stamp, args.spec, args.require)
    return 0


if __name__ == "__main__":
    sys.exit(main())
