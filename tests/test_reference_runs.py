"""Long CPU runs survive a change of machine: `reference_runs.py save` keeps an unfinished run's
checkpoint and log under results/reference/partial/, `restore` puts them back on a fresh machine, the
run resumes, and the next `save` files it as a finished reference run (table, RUN.md, whole log)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from contextlib import redirect_stderr
from io import StringIO

import pytest
import torch

from conftest import REPO
from mwnet.compute import bf16_native
from mwnet.config import load_params
from test_train import make_env

spec = importlib.util.spec_from_file_location("reference_runs", REPO / "workflow" / "scripts" / "reference_runs.py")
reference_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference_runs)


def train_logged(params, run_dir, **kw):
    """train_run with its stderr (the epoch lines) written to run_dir/train.log, as nohup ... > log does."""
    from mwnet.train import train_run

    buf = StringIO()
    try:
        with redirect_stderr(buf):
            train_run(params, "cifar10", "uniform_40", "1-10-1", 1, run_dir, device="cpu", tracking=False,
                      progress=False, **kw)
    finally:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train.log").write_text(buf.getvalue())


def test_unfinished_run_moves_machine_and_is_filed_when_finished(tmp_path, monkeypatch):
    from mwnet.train import StopRequested

    torch.set_num_threads(1)
    params_dir = make_env(tmp_path)
    monkeypatch.chdir(tmp_path)  # the paper table's path in params is relative
    (tmp_path / "workflow").mkdir()
    shutil.copy(REPO / "workflow" / "paper_table1.csv", tmp_path / "workflow" / "paper_table1.csv")
    params = load_params(params_dir)
    run = tmp_path / "models" / "tiny" / "cifar10" / "uniform_40" / "1-10-1" / "seed1"
    dest = tmp_path / "results" / "reference" / "full-cpu"
    partial = tmp_path / "results" / "reference" / "partial" / "full-cpu" / "cifar10" / "uniform_40" / "1-10-1" / "seed1"

    with pytest.raises(StopRequested):  # the machine goes after epoch 1
        train_logged(params, run, stop_after_epoch=1)
    for _ in range(2):  # saving twice (hourly) keeps one copy of the log and of the note
        assert reference_runs.save(params, dest, partial.parents[3], "paused once", params_dir) == 0
    assert (partial / "checkpoint.pt").is_file() and (partial / "train.log").read_text().count("epoch 1/3") == 1
    assert not (dest / "RUN.md").exists()  # nothing finished yet
    assert (partial.parents[3] / "progress.png").read_bytes()[:4] == b"\x89PNG"

    shutil.rmtree(tmp_path / "models")  # a new machine: only the committed partial is there
    assert reference_runs.restore(params, partial.parents[3]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    train_logged(params, run)
    assert reference_runs.save(params, dest, partial.parents[3], "two machines", params_dir) == 0

    kept = dest / "runs" / "tiny" / "cifar10" / "uniform_40" / "1-10-1" / "seed1"
    assert {p.name for p in kept.iterdir()} == {"metrics.json", "history.csv", "weight_curve.csv", "train.log",
                                                "provenance.json"}
    assert json.loads((kept / "metrics.json").read_text()) == json.loads((run / "metrics.json").read_text())
    log = (kept / "train.log").read_text()
    assert log.index("epoch 1/3") < log.index("resuming") < log.index("epoch 2/3") < log.index("epoch 3/3")
    segs = json.loads((kept / "provenance.json").read_text())["segments"]
    assert [(s["after_epoch"], s["epochs_done"]) for s in segs] == [(0, 1), (1, 2)]
    # precision auto: bf16 where this CPU computes it natively, else fp32; one run, one precision
    ran = "bf16" if bf16_native(torch.device("cpu")) else "fp32"
    assert all(s["precision"] == ran and s["device"].startswith("cpu (") for s in segs)
    assert not partial.exists(), "a finished run's partial is removed"
    assert "Profile: tiny" in (dest / "table1.md").read_text()
    md = (dest / "RUN.md").read_text()
    assert "cifar10/uniform_40/1-10-1/seed1" in md and "two machines" in md and "| 0, 1, " in md and "; 1, 2, " in md
    assert json.loads((kept / "provenance.json").read_text())["notes"] == ["paused once", "two machines"]
    assert md.count("paused once") == 1  # the note given while unfinished is kept with the run


def test_restore_keeps_a_checkpoint_that_got_further(tmp_path, monkeypatch, capsys):
    params_dir = make_env(tmp_path, corruptions=())
    params = load_params(params_dir)
    partial = tmp_path / "partial"
    for root, epoch in ((partial, 1), (tmp_path / "models" / "tiny", 2)):
        d = root / "cifar10" / "uniform_40" / "ce" / "seed1"
        d.mkdir(parents=True)
        torch.save({"epoch": epoch}, d / "checkpoint.pt")
    reference_runs.restore(params, partial)
    here = tmp_path / "models" / "tiny" / "cifar10" / "uniform_40" / "ce" / "seed1" / "checkpoint.pt"
    assert torch.load(here, weights_only=True)["epoch"] == 2
    out = capsys.readouterr().out
    assert "as far or further" in out and "--arch ce --seed 1" in out
