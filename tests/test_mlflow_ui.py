"""The MLflow UI as a user sees it: tiny tracked runs and a report, served by `mlflow ui` on 127.0.0.1,
checked through the REST API (workflow/scripts/mlflow_ui_check.py), and a headless-Chromium screenshot
of the runs page when Chromium is installed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "workflow" / "scripts" / "mlflow_ui_check.py"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from test_train import make_env

    from mwnet import paths
    from mwnet.cli import main
    from mwnet.config import load_params
    from mwnet.train import train_run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ui_env")
    params = load_params(make_env(root))
    for arch in ("ce", "1-100-1"):
        out = paths.run_dir(params.report.models_root, "tiny", "cifar10", "uniform_40", arch, 1)
        train_run(params, "cifar10", "uniform_40", arch, 1, out, device="cpu", progress=False)
    (root / "workflow").mkdir()
    shutil.copy(REPO / "workflow" / "paper_table1.csv", root / "workflow")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["report", "--params", params.params_dir]) == 0
    finally:
        os.chdir(cwd)
    return root, params


@pytest.mark.slow
def test_runs_table_has_dataset_and_source_and_the_report_holds_the_table(store, tmp_path):
    root, params = store
    shot = tmp_path / "runs.png"
    r = subprocess.run([sys.executable, str(CHECK), "--params", params.params_dir,
                        "--store", f"sqlite:///{root / 'mlflow.db'}", "--screenshot", str(shot)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 training runs, 1 report run(s)" in r.stdout and "OK" in r.stdout
    if shutil.which("chromium"):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.slow
def test_check_fails_naming_what_is_missing(store, tmp_path):
    """A run without dataset inputs (logged by hand, as another tool would) is named."""
    from mwnet.tracking import Tracker

    root, params = store
    db = tmp_path / "m.db"
    shutil.copy(root / "mlflow.db", db)
    t = Tracker(f"sqlite:///{db}", "mwnet-table1-tiny")
    t.start(None, "bare", params={}, tags={})
    t.end("FINISHED")
    r = subprocess.run([sys.executable, str(CHECK), "--params", params.params_dir, "--store", f"sqlite:///{db}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "run bare: dataset inputs none" in r.stderr and "run bare: no tag mlflow.source.name" in r.stderr
