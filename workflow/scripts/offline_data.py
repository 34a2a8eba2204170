"""Real CIFAR-10 and CIFAR-100 without internet, from the verified copies in ../shared/data, and
params/local.yaml pointing params/data.yaml's sources at them.

    python workflow/scripts/offline_data.py [--out DIR] [--shared DIR] [--params DIR]

--shared is the folder holding cifar10/ and cifar100/ (default: ../shared/data beside the repo). Each
copy's own export.py checks its content sums and writes the official layout: CIFAR-10 with the same
images and labels as the official files (content-verified by `mwnet data fetch`), CIFAR-100 byte for
byte the official files (verified by their official md5 sums). Both are fetched as verified; nothing
is accepted unverified. Without the copies (a machine outside this project) it does nothing, and the
pipeline downloads the data. An existing params/local.yaml is left alone unless it is this script's
own (same content, or an older version of it), so that a user's settings are never lost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DATASETS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}  # copy -> exported folder
HEADER = "# Written by workflow/scripts/offline_data.py"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mwnet" / "offline-data",
                    help="where to write the exported folders (default: ~/.cache/mwnet/offline-data)")
    ap.add_argument("--shared", type=Path, default=None,
                    help="folder with the offline copies cifar10/ and cifar100/, each with export.py "
                         "(default: ../shared/data; when absent, nothing is done and the pipeline downloads)")
    ap.add_argument("--params", type=Path, default=REPO / "params", help="parameter folder (default: params)")
    args = ap.parse_args(argv)
    out = args.out.resolve()

    overlay = {"data": {"sources": {ds: {"location": str(out), "allow_unverified": False} for ds in DATASETS}}}
    text = (f"{HEADER}: the real CIFAR-10 and CIFAR-100\n"
            "# exported from the verified offline copies. Delete this file to download them instead.\n"
            + yaml.safe_dump(overlay, sort_keys=False))
    local = args.params / "local.yaml"
    if local.exists() and local.read_text() != text and not local.read_text().startswith(HEADER):
        sys.exit(f"{local} exists with other settings; merge these into it by hand and rerun:\n{text}")

    shared = args.shared or REPO.parent / "shared" / "data"
    exports = {ds: shared / ds / "export.py" for ds in DATASETS}
    missing = [str(p) for p in exports.values() if not p.exists()]
    if missing:
        if args.shared is None:  # not one of this project's machines: leave the sources (download)
            print(f"no offline CIFAR copies at {shared} (missing {', '.join(missing)}): params/data.yaml's "
                  "sources stay (download)")
            return 0
        sys.exit(f"no offline CIFAR copies at {shared}: missing {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    for ds, folder in DATASETS.items():
        if not (out / folder).exists():
            # export.py checks the content (and, for CIFAR-100, the official md5 sums) and writes
            # nothing on a mismatch
            subprocess.run([sys.executable, str(exports[ds]), str(out)], check=True)
    local.write_text(text)
    print(f"offline raw data (real CIFAR-10 and CIFAR-100) in {out}; sources set in {local}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
