"""The MLflow store survives a kill at any moment: it is created whole or not at all, a half-made one
(from an older version) is moved aside when it holds no run, a store that holds runs is never changed,
and a cell's attempt killed before its first checkpoint does not stay RUNNING beside its rerun."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mwnet.tracking import Tracker, TrackingStoreError

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


def uri(db: Path) -> str:
    return f"sqlite:///{db}"


def tables(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


def statuses(db: Path, experiment: str) -> list[tuple[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri(db))
    exp = client.get_experiment_by_name(experiment)
    return sorted((r.info.run_name, r.info.status) for r in client.search_runs([exp.experiment_id]))


def test_a_store_is_created_in_place_by_a_rename_and_leftovers_of_a_killed_creation_go(tmp_path):
    db = tmp_path / "mlflow.db"
    stale = tmp_path / ".mlflow.db.creating-12345"  # what a creation killed half-way leaves
    stale.write_bytes(b"half a database")
    Tracker(uri(db), "e")._get_client()
    assert {"runs", "experiments", "alembic_version"} <= tables(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_half_made_store_without_runs_is_moved_aside_and_replaced(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)  # what MLflow's table creation leaves when killed part way
    con.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("CREATE TABLE params (key TEXT, value TEXT, run_uuid TEXT)")
    con.execute("CREATE INDEX index_params_run_uuid ON params (run_uuid)")
    con.commit()
    con.close()
    before = hashlib.md5(db.read_bytes()).hexdigest()
    t = Tracker(uri(db), "e")
    t.start(None, "cifar10/flip_40/ce/seed1", {"a": "1"}, {})
    t.end("FINISHED")
    aside = list(tmp_path.glob("mlflow.db.incomplete-*"))
    assert len(aside) == 1 and hashlib.md5(aside[0].read_bytes()).hexdigest() == before  # kept as it was
    assert "creation never finished, with no run in it" in capsys.readouterr().err
    assert statuses(db, "e") == [("cifar10/flip_40/ce/seed1", "FINISHED")]


def test_a_half_made_store_with_runs_is_left_untouched_with_the_way_out(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)  # no schema version: its creation never finished, yet it holds a run
    con.execute("CREATE TABLE runs (run_uuid TEXT)")
    con.execute("INSERT INTO runs VALUES ('abc')")
    con.commit()
    con.close()
    before = hashlib.md5(db.read_bytes()).hexdigest()
    with pytest.raises(TrackingStoreError, match=rf"{db} holds 1 run\(s\).*Nothing was changed.*mv {db}"):
        Tracker(uri(db), "e")._get_client()
    assert hashlib.md5(db.read_bytes()).hexdigest() == before
    assert not list(tmp_path.glob("mlflow.db.incomplete-*"))


def test_a_store_that_mlflow_cannot_open_is_reported_with_the_way_out(tmp_path):
    """E.g. made by a newer MLflow (a schema version this one does not know): nothing is changed."""
    db = tmp_path / "mlflow.db"
    t = Tracker(uri(db), "e")
    t.start(None, "cell", {"a": "1"}, {})
    t.end("FINISHED")
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                    "c.execute(\"UPDATE alembic_version SET version_num = 'ffffffffffff'\"); c.commit()", str(db)],
                   check=True)
    before = hashlib.md5(db.read_bytes()).hexdigest()
    code = "import sys; from mwnet.tracking import Tracker; Tracker(sys.argv[1], 'e')._get_client()"
    r = subprocess.run([sys.executable, "-c", code, uri(db)], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"MLflow store {db} (1 run(s)) cannot be opened" in r.stderr and "mlflow db upgrade" in r.stderr
    assert hashlib.md5(db.read_bytes()).hexdigest() == before


def test_an_attempt_killed_before_its_first_checkpoint_is_closed_by_the_rerun(tmp_path):
    db = tmp_path / "mlflow.db"
    first = Tracker(uri(db), "e")
    first.start(None, "cifar10/flip_40/ce/seed1", {"a": "1"}, {})  # then SIGKILL: never ended
    other = Tracker(uri(db), "e")
    other.start(None, "cifar10/flip_40/1-100-1/seed1", {"a": "1"}, {})  # another cell, still running
    rerun = Tracker(uri(db), "e")
    rerun.start(None, "cifar10/flip_40/ce/seed1", {"a": "1"}, {})
    rerun.end("FINISHED")
    assert statuses(db, "e") == [("cifar10/flip_40/1-100-1/seed1", "RUNNING"),
                                 ("cifar10/flip_40/ce/seed1", "FINISHED"),
                                 ("cifar10/flip_40/ce/seed1", "KILLED")]
    from mlflow import MlflowClient

    killed = MlflowClient(tracking_uri=uri(db)).get_run(first.run_id)
    assert killed.data.tags["mwnet.replaced_by"] == rerun.run_id


@pytest.mark.slow
def test_killing_the_stores_creation_at_any_moment_leaves_no_store_or_a_whole_one(tmp_path):
    """SIGKILL (the whole process group) at moments spread over the creation: afterwards the store is
    absent or complete, and the next run records normally."""
    code = ("import sys; from mwnet.tracking import Tracker; "
            "Tracker(sys.argv[1], 'e')._get_client(); print('created', flush=True)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, uri(tmp_path / "timing.db")], check=True, capture_output=True)
    full = time.perf_counter() - t0
    outcomes = []
    for i, frac in enumerate((0.2, 0.4, 0.55, 0.7, 0.8, 0.9, 0.97)):
        db = tmp_path / f"k{i}" / "mlflow.db"
        db.parent.mkdir()
        p = subprocess.Popen([sys.executable, "-c", code, uri(db)], start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(frac * full)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        outcomes.append("absent" if not db.exists() else "whole")
        if db.exists():
            assert {"runs", "experiments", "alembic_version"} <= tables(db)
        t = Tracker(uri(db), "e")
        t.start(None, "cell", {"a": "1"}, {})
        t.end("FINISHED")
        assert statuses(db, "e") == [("cell", "FINISHED")]
        assert not list(db.parent.glob("*.incomplete-*")) and not list(db.parent.glob(".mlflow.db.creating-*"))
    assert "absent" in outcomes  # the kills did land during the creation
