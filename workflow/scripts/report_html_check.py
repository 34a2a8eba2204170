"""Check a Snakemake HTML report (`snakemake --report report.html`) the way a reader would use it:
the table, the figures and the plan are inside it, each byte for byte the file the pipeline wrote.

    python workflow/scripts/report_html_check.py report.html RESULTS_DIR

Snakemake embeds every result as a base64 data URI beside its file name; this reads them back.
Exit 1, naming what is missing or different, otherwise prints what the report holds.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

# under the results root of the profile (params/report.yaml results_root)
EXPECTED = ["table1.csv", "table1.md", "figures/weight_curves.png", "figures/test_accuracy.png",
            "figures/weight_groups.png", "plan.txt"]
DATA_URI = re.compile(r'"data_uri": "data:[^;"]+;charset=utf8;filename=([^;"]+);base64,([A-Za-z0-9+/=]*)"')


def embedded_files(html: str) -> dict[str, bytes]:
    return {name: base64.b64decode(data) for name, data in DATA_URI.findall(html)}


def check(report: Path, results: Path) -> list[str]:
    files = embedded_files(report.read_text(errors="replace"))
    problems = []
    for rel in EXPECTED:
        name, on_disk = Path(rel).name, results / rel
        if name not in files:
            problems.append(f"{name}: not in {report} (it holds {sorted(files) or 'no file'})")
        elif not on_disk.is_file() or files[name] != on_disk.read_bytes():
            problems.append(f"{name}: the report's copy differs from {on_disk}")
    if not problems:
        table = files["table1.csv"].decode().splitlines()
        print(f"report check: {report} holds {', '.join(EXPECTED)} of {results}; table1.csv: {len(table) - 1} rows")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = check(Path(sys.argv[1]), Path(sys.argv[2]))
    for p in found:
        print(f"report check: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)
