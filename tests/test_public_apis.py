"""The pipeline leans on its libraries' public interfaces only: no private MLflow or Snakemake names,
no Snakemake workflow internals in the rules, and one lock library (filelock) instead of fcntl."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sorted([*ROOT.glob("mwnet/**/*.py"), *ROOT.glob("workflow/scripts/*.py"), *ROOT.glob("benchmarks/*.py")])
RULES = sorted([ROOT / "Snakefile", *ROOT.glob("workflow/rules/*.smk")])
# modules that MLflow keeps for itself although their names carry no underscore
INTERNAL_MODULES = ("mlflow.system_metrics.system_metrics_monitor", "mlflow.data.dataset_source_registry",
                    "mlflow.store", "mlflow.tracking._")
PUBLIC_WORKFLOW_ATTRIBUTES = {"cores", "basedir"}  # documented for use in a Snakefile


def private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("mlflow", "snakemake"):
            parts = node.module.split(".") + [a.name for a in node.names]
            if any(p.startswith("_") for p in parts) or node.module.startswith(INTERNAL_MODULES):
                found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "fcntl":
                    found.append(f"{path.name}:{node.lineno} import fcntl (use filelock)")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_to_mlflow"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


def test_no_private_mlflow_or_snakemake_names_and_no_fcntl():
    assert PYTHON and not [u for p in PYTHON for u in private_uses(p)]


def test_the_rules_use_only_public_workflow_attributes():
    used = {(p.name, m) for p in RULES for m in re.findall(r"(?<![/\w])workflow\.(\w+)", p.read_text())}
    assert used and {m for _, m in used} <= PUBLIC_WORKFLOW_ATTRIBUTES, sorted(used)


def test_the_check_itself_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import fcntl\nfrom mlflow.data.dataset_source_registry import resolve_dataset_source\n"
                   "from mlflow.entities import _private\nx = ds._to_mlflow_entity()\n")
    assert len(private_uses(bad)) == 4
