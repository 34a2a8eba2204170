"""Killed at any moment, nothing breaks.

The pipeline (the real `mwnet`, synthetic CIFAR-10, the quick profile narrowed to one column: a CE run
and a 1-100-1 run, then the report) is SIGKILLed with its whole process group at moments chosen to
cover every stage: fetch, corrupt, the MLflow store's creation, a run before and after its first epoch,
a run finishing, the report. Then it is rerun (with `snakemake --unlock` when Snakemake asks for it)
until it finishes. After each: the table is complete; every run's metrics.json, history and weights
equal those of an uninterrupted run (bit-identical on CPU; times aside); no temporary file is left and
no half-written file passes for a finished one; MLflow holds exactly one FINISHED run per cell and no
RUNNING one (an attempt killed before its first checkpoint stays as KILLED, naming its replacement).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from test_pipeline import ENV, copy_pipeline, seed_step_times

pytestmark = pytest.mark.slow

RUNS = ("ce", "1-100-1")
RUN_ROOT = "models/quick/cifar10/imbalance_100"
TIMES = {"wall_time_s", "images_per_s", "estimated_wall_time_s", "mlflow_run_id"}
# which processes trained a run: a resumed run has one entry per process (checked on its own)
PROCESS_HISTORY = {"segments"}
TIME_COLUMNS = {"epoch_time_s", "images_per_s"}


def _first_run_dir(root: Path) -> list[Path]:
    return [root / RUN_ROOT / a / "seed1" for a in RUNS]


# (name, condition on the workspace that triggers the kill): every stage of the pipeline
KILL_POINTS = [
    ("fetch", lambda r: (r / "data/raw").exists()),
    ("corrupt", lambda r: (r / "data/corrupted").exists()),
    ("store creation", lambda r: (r / "mlflow.db.lock").exists()),
    ("run started, no epoch yet", lambda r: any(d.exists() for d in _first_run_dir(r))),
    ("after a first epoch", lambda r: any((d / "checkpoint.pt").exists() for d in _first_run_dir(r))),
    ("a run finishing", lambda r: any((d / "model.pt").exists() or (d / "metrics.json").exists()
                                      for d in _first_run_dir(r))),
    ("report", lambda r: (r / "results").exists()),
]


class Pipeline:
    def __init__(self, root: Path, fake_raw_root: Path):
        self.root = copy_pipeline(root / "repo")
        (self.root / "params" / "local.yaml").write_text(yaml.safe_dump({
            "data": {"sources": {"cifar10": {"location": str(fake_raw_root), "allow_unverified": True}}},
            "grid": {"select": [{"datasets": ["cifar10"], "corruptions": ["imbalance_100"], "archs": ["1-100-1"]}]},
        }))
        self.env = {**ENV, "MWNET_CACHE_DIR": str(root / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
        seed_step_times(root / "cache", self.root / "params", lambda backbone: 1e-4)

    def cmd(self, *args):
        return [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--config", "profile=quick"]

    def run(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args), cwd=self.root, env=self.env, capture_output=True, text=True)

    def kill_when(self, condition, timeout: float = 600) -> bool:
        """Start the pipeline, SIGKILL its process group once `condition(root)` holds; False if it
        finished first."""
        p = subprocess.Popen(self.cmd("all"), cwd=self.root, env=self.env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < timeout:
            if condition(self.root):
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.02)
        p.wait()
        return False

    def finish(self) -> int:
        """Rerun until it succeeds; returns the number of reruns."""
        for attempt in range(1, 4):
            r = self.run("all")
            if r.returncode == 0:
                return attempt
            if "cannot be locked" in r.stdout + r.stderr:
                self.run("--unlock")
                continue
            raise AssertionError(f"rerun failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        raise AssertionError("the pipeline did not finish in 3 reruns")


def outcome(root: Path) -> dict:
    """What a finished pipeline holds, times aside."""
    out = {}
    for d in _first_run_dir(root):
        m = json.loads((d / "metrics.json").read_text())
        rows = list(csv.DictReader((d / "history.csv").open()))
        model = torch.load(d / "model.pt", map_location="cpu")
        out[d.parent.name] = {
            "metrics": {k: v for k, v in m.items() if k not in TIMES | PROCESS_HISTORY},
            "segments_start_at_zero": m["segments"][0]["after_epoch"] == 0,
            "history": [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows],
            "weight_curve": (d / "weight_curve.csv").read_text(),
            "model": {k: v.tolist() for k, v in model["model"].items()},
        }
    table = list(csv.DictReader((root / "results/table1.csv").open()))
    out["table"] = [(r["architecture"], r["cifar10/imbalance_100/best"], r["cifar10/imbalance_100/final"])
                    for r in table]
    return out


def mlflow_runs(root: Path) -> list[tuple[str, str]]:
    """(name, status) of every run that is not a killed attempt closed by its rerun, nor an earlier
    report (every report is kept; one is the latest); checks that each closed attempt names the run
    that replaced it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mwnet-table1-quick")
    runs = client.search_runs([exp.experiment_id])
    by_id = {r.info.run_id: r for r in runs}
    kept = []
    for r in runs:
        if r.info.status == "KILLED" and "mwnet.replaced_by" in r.data.tags:
            successor = by_id[r.data.tags["mwnet.replaced_by"]]
            assert successor.info.run_name == r.info.run_name and successor.info.status == "FINISHED"
        elif r.data.tags.get("mwnet.latest") == "false":
            assert r.info.status == "FINISHED", r.info
        else:
            kept.append((r.info.run_name, r.info.status))
    return sorted(kept)


def leftovers(root: Path) -> list[str]:
    """Temporary or half-written files anywhere the pipeline writes."""
    found = []
    for top in ("data", "models", "results"):
        for p in (root / top).rglob("*"):
            if p.name == ".snakemake_timestamp":  # Snakemake's own mark of a finished folder output
                continue
            if p.is_file() and (".tmp" in p.name or p.name.startswith(".") or ".creating-" in p.name):
                found.append(str(p.relative_to(root)))
    found += [p.name for p in root.glob(".mlflow.db.creating-*")] + [p.name for p in root.glob("mlflow.db.incomplete-*")]
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fake_raw_root):
    """The uninterrupted pipeline's outcome."""
    p = Pipeline(tmp_path_factory.mktemp("uninterrupted"), fake_raw_root)
    r = p.run("all")
    assert r.returncode == 0, r.stderr[-3000:]
    return outcome(p.root)


@pytest.mark.parametrize("name,condition", KILL_POINTS, ids=[k for k, _ in KILL_POINTS])
def test_killed_anywhere_the_rerun_ends_as_if_never_killed(name, condition, reference, tmp_path, fake_raw_root):
    p = Pipeline(tmp_path, fake_raw_root)
    assert p.kill_when(condition), f"the pipeline finished before the kill point {name!r} was reached"
    # right after the kill: a run that looks finished is complete
    for d in _first_run_dir(p.root):
        if (d / "metrics.json").exists():
            assert all((d / f).is_file() for f in ("history.csv", "weight_curve.csv", "model.pt"))
            json.loads((d / "metrics.json").read_text())
    p.finish()
    assert outcome(p.root) == reference
    assert mlflow_runs(p.root) == sorted([(f"cifar10/imbalance_100/{a}/seed1", "FINISHED") for a in RUNS]
                                         + [("report/quick", "FINISHED")])
    assert leftovers(p.root) == []
    assert "Nothing to be done" in p.run("-n", "all").stdout
