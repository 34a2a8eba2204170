"""MLflow tracking: URI / experiment resolution, what a run records, statuses, concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mwnet.tracking import experiment_name, flatten, resolve_tracking_uri, sqlite_db_path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"


def test_tracking_uri_env_overrides_params(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "http://localhost:5000"


def test_experiment_name_separates_profiles():
    assert experiment_name("mwnet-table1", "full") == "mwnet-table1"
    assert experiment_name("mwnet-table1", "quick") == "mwnet-table1-quick"


def test_sqlite_db_path_and_flatten():
    assert sqlite_db_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_db_path("sqlite:///rel/m.db") == Path.cwd() / "rel" / "m.db"
    assert sqlite_db_path("http://host") is None
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


# ------------------------------------------------------------------------------------------------
# tracked tiny runs (fake data; see test_train.make_env)


@pytest.fixture(scope="module")
def tracked_env(tmp_path_factory):
    from test_train import make_env

    from mwnet.config import load_params

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tracking_env")
    params = load_params(make_env(root))
    return params, root


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_tracked_run_records_everything(tracked_env):
    from mwnet.train import train_run

    params, root = tracked_env
    out = root / "runs" / "tracked"
    m = train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu")
    run = _client(root).get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    exp = _client(root).get_experiment(run.info.experiment_id)
    assert exp.name == "mwnet-table1-tiny"

    p = run.data.params
    assert (p["dataset"], p["corruption"], p["arch"], p["seed"], p["profile"]) == (
        "cifar10", "uniform_40", "1-10-1", "1", "tiny")
    assert p["epochs"] == "3" and p["backbone.name"] == "resnet" and p["classifier_optimizer.lr"] == "0.1"
    assert p["weighting_optimizer.name"] == "sgd" and p["train_subset"] == "200"
    assert p["recipe_name"] == "uniform" and p["corruption_spec.rate"] == "0.4"

    t = run.data.tags
    for key in ("dataset", "corruption", "arch", "seed", "profile", "git_commit", "git_dirty",
                "split_md5", "raw_verified", "device"):
        assert key in t, key
    assert t["split_md5"] == m["split_md5"] and t["device"].startswith("cpu (") and t["raw_verified"] in ("true", "false")

    client = _client(root)
    acc = client.get_metric_history(run.info.run_id, "test_acc")
    assert sorted(x.step for x in acc) == [1, 2, 3]
    assert {x.step: x.value for x in acc}[3] == m["final_acc"]
    for key in ("lr", "train_loss", "train_acc", "meta_loss", "mean_weight", "test_loss", "epoch_time_s", "images_per_s",
                "best_acc"):
        assert len(client.get_metric_history(run.info.run_id, key)) >= 3, key
    assert run.data.metrics["final_acc"] == m["final_acc"]

    # what the runs table's Source and Dataset columns show
    assert t["mlflow.source.name"] == "mwnet train" and t["mlflow.source.type"] == "LOCAL"
    assert t["mlflow.source.git.commit"] == t["git_commit"]
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "eval"}
    train_ds, test_ds = inputs["training"], inputs["eval"]
    assert train_ds.name == "cifar10/uniform_40/seed1" and train_ds.digest == m["split_md5"]
    assert "corrupted/cifar10/uniform_40/seed1" in train_ds.source
    profile = json.loads(train_ds.profile)
    assert profile["train_images"] == 200 and profile["raw_verified"] is False and profile["corrupted_labels"] > 0
    assert test_ds.name == "cifar10/test" and json.loads(test_ds.profile)["test_images"] == 100

    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert arts == {"history.csv", "weight_curve.csv", "metrics.json", "weight_curve.png"}
    # artifacts beside the store, not in the models folder or the cwd
    art_dir = root / "mlartifacts" / "mwnet-table1-tiny" / run.info.run_id / "artifacts"
    assert (art_dir / "weight_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (art_dir / "metrics.json").read_text() == (out / "metrics.json").read_text()


def test_crash_marks_run_failed(tracked_env, monkeypatch):
    import mwnet.train

    params, root = tracked_env

    def broken_eval(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(mwnet.train, "evaluate", broken_eval)
    with pytest.raises(RuntimeError, match="boom"):
        mwnet.train.train_run(params, "cifar10", "uniform_40", "1-20-1", 1, root / "runs" / "crash", device="cpu")
    runs = _client(root).search_runs(
        [_client(root).get_experiment_by_name("mwnet-table1-tiny").experiment_id],
        filter_string="params.arch = '1-20-1'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_interrupted_run_is_killed_then_resumed_in_the_same_mlflow_run(tracked_env):
    from mwnet.train import StopRequested, train_run

    params, root = tracked_env
    out = root / "runs" / "resumed"
    with pytest.raises(StopRequested):
        train_run(params, "cifar10", "uniform_40", "1-50-1", 1, out, device="cpu", stop_after_epoch=2)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    run_id = ckpt["mlflow_run_id"]
    assert _client(root).get_run(run_id).info.status == "KILLED"

    m = train_run(params, "cifar10", "uniform_40", "1-50-1", 1, out, device="cpu")
    assert m["mlflow_run_id"] == run_id
    run = _client(root).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("resumed") == "true"
    steps = sorted(x.step for x in _client(root).get_metric_history(run_id, "test_acc"))
    assert steps == [1, 2, 3]


# ------------------------------------------------------------------------------------------------
# several processes on one fresh SQLite store

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mwnet.tracking import Tracker
    uri, name, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    t = Tracker(uri, "parallel-exp")
    t.start(None, run_name=name, params={"name": name, "epochs": "5"}, tags={"writer": name})
    for epoch in range(1, 6):
        t.log_epoch(epoch, {"test_acc": 10.0 * epoch, "train_loss": 1.0 / epoch})
    art = out / f"{name}.txt"
    art.write_text(name)
    t.log_artifacts([art])
    t.end("FINISHED")
    print(t.run_id)
    """
)


@pytest.mark.slow
def test_parallel_writers_share_a_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, uri, f"w{i}", str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    run_ids = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(run_ids) == 3

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name == "parallel-exp"]
    assert len(exps) == 1, "the experiment was created exactly once"
    runs = client.search_runs([exps[0].experiment_id])
    assert {r.info.run_id for r in runs} == run_ids
    for r in runs:
        assert r.info.status == "FINISHED"
        name = r.data.params["name"]
        assert r.data.tags["writer"] == name
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "test_acc")) == [1, 2, 3, 4, 5]
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == [f"{name}.txt"]
    assert (tmp_path / "store" / "mlartifacts" / "parallel-exp").is_dir()


def test_resume_with_unknown_run_id_starts_a_new_run(tmp_path, capsys):
    from mwnet.tracking import Tracker

    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    run_id = t.start("0" * 32, run_name="r", params={"a": "1"}, tags={"b": "2"})
    assert run_id and run_id != "0" * 32 and "starting a new run" in capsys.readouterr().err
    t.end("FINISHED")
    assert _client(tmp_path).get_run(run_id).info.status == "FINISHED"
    disabled = Tracker("sqlite:///nowhere.db", "exp", enabled=False)
    assert disabled.start(None, "r", {}, {}) is None
    disabled.log_epoch(1, {"x": 1.0})
    disabled.end("FAILED")
    assert not Path("nowhere.db").exists()


def test_report_is_its_own_mlflow_run_with_the_table(tracked_env, monkeypatch):
    """mwnet report logs report/<profile>: the table files and figures as artifacts, per-cell numbers
    as metrics; a second report is a new run, the first is kept and only the newest is tagged latest."""
    from mwnet.cli import main

    params, root = tracked_env
    monkeypatch.chdir(root)
    (root / "workflow").mkdir(exist_ok=True)
    import shutil

    shutil.copy(Path(__file__).resolve().parents[1] / "workflow" / "paper_table1.csv", root / "workflow")
    from mwnet import paths
    from mwnet.train import train_run

    out = paths.run_dir(params.report.models_root, "tiny", "cifar10", "uniform_40", "ce", 1)
    train_run(params, "cifar10", "uniform_40", "ce", 1, out, device="cpu", tracking=False, progress=False)
    for _ in range(2):
        assert main(["report", "--params", params.params_dir]) == 0
    client = _client(root)
    exp = client.get_experiment_by_name("mwnet-table1-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mwnet.report` = 'tiny'",
                              order_by=["attributes.start_time DESC"])
    assert len(runs) == 2, "every report is kept"
    assert all(r.info.run_name == "report/tiny" and r.info.status == "FINISHED" for r in runs)
    assert [r.data.tags["mwnet.latest"] for r in runs] == ["true", "false"]
    r = runs[0]
    assert r.data.tags["mlflow.source.name"] == "mwnet report"
    assert r.data.tags["trained_by_commits"] == json.loads((out / "metrics.json").read_text())["git_commit"][:12]
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"table1.md", "table1.csv", "table1.tex", "metrics.json", "figures"} <= arts
    figs = {a.path for a in client.list_artifacts(r.info.run_id, "figures")}
    assert "figures/weight_curves.png" in figs
    assert r.data.metrics["cifar10/uniform_40/ce/best"] == json.loads((out / "metrics.json").read_text())["best_acc"]


def test_system_metrics_are_logged_to_the_run_through_mlflow(tmp_path):
    """On CUDA, training logs system metrics (GPU ones where NVML is installed); the CPU and memory
    ones come from the same monitor, so they show that it runs and writes into the run."""
    import time as _time

    from mwnet.tracking import Tracker

    t = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    run_id = t.start(None, run_name="r", params={}, tags={})
    t.start_system_metrics(interval_s=0.2)
    _time.sleep(2.0)
    t.end("FINISHED")
    run = _client(tmp_path).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
