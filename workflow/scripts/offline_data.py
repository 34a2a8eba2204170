"""Raw data without internet, for the quick profile and CI: CIFAR-10 rebuilt from the verified copy in
../shared/data/cifar10, CIFAR-100 made up (`mwnet data synth`: the real one is not available offline),
and params/local.yaml pointing params/data.yaml's sources at them.

    python workflow/scripts/offline_data.py [--out DIR] [--shared DIR] [--params DIR]

Without --shared and without ../shared/data/cifar10 (a machine outside this project) it does nothing,
and the pipeline downloads the data.
CIFAR-100 built this way is marked unverified all the way to the tables (†): its numbers mean nothing.
On a machine with internet skip this and keep `location: download`. An existing params/local.yaml is
left alone unless it is this script's own (same content), so that a user's settings are never lost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mwnet" / "offline-data",
                    help="where to write the source folders (default: ~/.cache/mwnet/offline-data)")
    ap.add_argument("--shared", type=Path, default=None,
                    help="the offline CIFAR-10 copy with export.py (default: ../shared/data/cifar10; when "
                         "that is absent, nothing is done and the pipeline downloads the data)")
    ap.add_argument("--params", type=Path, default=REPO / "params", help="parameter folder (default: params)")
    args = ap.parse_args(argv)
    out = args.out.resolve()

    overlay = {"data": {"sources": {
        "cifar10": {"location": str(out), "allow_unverified": False},
        "cifar100": {"location": str(out), "allow_unverified": True},  # synthetic: accepted, recorded
    }}}
    text = ("# Written by workflow/scripts/offline_data.py: raw data without internet (CIFAR-100 is\n"
            "# synthetic; tables mark it). Delete this file to download the real data instead.\n"
            + yaml.safe_dump(overlay, sort_keys=False))
    local = args.params / "local.yaml"
    if local.exists() and local.read_text() != text:
        sys.exit(f"{local} exists with other settings; merge these into it by hand and rerun:\n{text}")

    shared = args.shared or REPO.parent / "shared" / "data" / "cifar10"
    export = shared / "export.py"
    if not export.exists():
        if args.shared is None:  # not one of this project's machines: leave the sources (download)
            print(f"no offline CIFAR-10 copy at {shared}: params/data.yaml's sources stay (download)")
            return 0
        sys.exit(f"no offline CIFAR-10 at {shared} (expected export.py there)")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "cifar-10-batches-py").exists():
        subprocess.run([sys.executable, str(export), str(out)], check=True)
    if not (out / "cifar-100-python").exists():
        subprocess.run([sys.executable, "-m", "mwnet.cli", "data", "synth", "--dataset", "cifar100",
                        "--out", str(out)], check=True)
    local.write_text(text)
    print(f"offline raw data in {out}; sources set in {local}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
