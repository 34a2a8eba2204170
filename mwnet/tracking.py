"""MLflow tracking of one training run: params, per-epoch metrics, tags, artifacts, final status.

Design:
- mlflow is imported lazily (it takes seconds), only when a Tracker is enabled.
- The tracking URI is params.tracking.tracking_uri unless MLFLOW_TRACKING_URI is set.
- With a SQLite store, every call that touches the store runs under a file lock on `<db>.lock`
  (filelock; the kernel drops it when a process dies):
  several training processes may start at once, and MLflow's first-time table creation / migration
  and the experiment get-or-create race otherwise (duplicate tables, duplicate experiment, "database
  is locked"). Calls are few (a handful per epoch), so serialising them costs nothing.
- Artifacts of a SQLite store go to `<db folder>/mlartifacts/<experiment>` (set when the experiment is
  created), never into the models folder and independent of the current working directory at later
  runs. Other stores (an MLflow server) keep their own artifact location.
- A SQLite store is created whole or not at all: MLflow builds its tables without a transaction, so
  it is built in a temporary file beside the store (in a child process, which closes every connection)
  and renamed into place. A store whose creation never finished (from older code) is moved aside when
  it holds no run; any other store that cannot be opened is left untouched, with an error that names
  it and the way out: a store that holds runs is never changed.
- A new run of a cell closes, as KILLED, any earlier record of the same cell that never ended (its
  process was killed before its first checkpoint, so nothing resumes it).
- Every report of a profile is kept as its own run (the history of the table); the newest carries
  the tag mwnet.latest = true, earlier ones false.
- Only MLflow's public API is used (MlflowClient, mlflow.entities, the fluent run for system metrics).
- A Tracker with enabled=False does nothing (unit tests, `--no-tracking`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SQLITE_PREFIX = "sqlite:///"
# MLflow 3's UI opens an experiment in its GenAI view (traces) unless the experiment says it is model
# training: this tag selects the "Model training" view (runs table, charts).
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND: "custom_model_development"}
ARTIFACTS_DIRNAME = "mlartifacts"
LATEST_TAG = "mwnet.latest"  # "true" on the newest report run of a profile
MAX_PARAM_LEN = 6000  # MLflow's limit for a param value


def resolve_tracking_uri(params_uri: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params_uri


def experiment_name(base: str, profile: str) -> str:
    """Runs of a non-paper profile go to their own experiment so they never mix with paper runs."""
    return base if profile == "full" else f"{base}-{profile}"


def sqlite_db_path(uri: str) -> Path | None:
    """Path of the database file for a sqlite:/// URI (relative to the cwd when not absolute)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri[len(SQLITE_PREFIX):]).absolute()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists are kept as one value."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_LEN]
    return out


class TrackingStoreError(RuntimeError):
    """The MLflow store exists but cannot be used; the message names it and the way out."""


def _query(db: Path, sql: str):
    """One value from a SQLite file, read-only; None when the table is missing or the file unreadable."""
    try:
        con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute(sql).fetchone()
            return row[0] if row else None
        finally:
            con.close()
    except sqlite3.Error:
        return None


def create_sqlite_store(db: Path) -> None:
    """Create MLflow's tables in a temporary file beside `db`, then rename it into place: an
    interruption leaves no store (and a temporary file that the next creation removes). Call it
    with the store's lock held."""
    for stale in db.parent.glob(f".{db.name}.creating-*"):  # left by a killed creation
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
    code = ("import sys; from mlflow import MlflowClient; "
            "MlflowClient(tracking_uri=sys.argv[1]).search_experiments(max_results=1)")
    try:
        subprocess.run([sys.executable, "-c", code, SQLITE_PREFIX + str(tmp)], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, db)
    except subprocess.CalledProcessError as e:
        raise TrackingStoreError(f"could not create the MLflow store {db}:\n{e.stderr[-2000:]}") from None
    finally:
        tmp.unlink(missing_ok=True)


def open_sqlite_store(db: Path, open_client):
    """`open_client()` on the store `db`, creating it atomically when it is missing (or an empty file).

    MLflow writes the schema version (alembic_version) only after its tables: a file without it is a
    creation that was interrupted (by an older version of this code, or another tool). It is moved
    aside when it holds no run and reported, untouched, when it does. A store that still fails to open
    is reported, untouched, with the way out."""
    if db.exists() and db.stat().st_size > 0 and _query(db, "SELECT version_num FROM alembic_version") is None:
        runs = _query(db, "SELECT count(*) FROM runs")
        if runs:
            raise TrackingStoreError(
                f"MLflow store {db} holds {runs} run(s) but its creation never finished (no schema "
                f"version). Nothing was changed. Copy it somewhere safe; to go on with a new store, move "
                f"it aside (mv {db} {db}.old) or set MLFLOW_TRACKING_URI.")
        aside = db.with_name(f"{db.name}.incomplete-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(db, aside)
        print(f"mlflow: {db} was a store whose creation never finished, with no run in it; moved it to "
              f"{aside} and created a new one", file=sys.stderr)
    if not db.exists() or db.stat().st_size == 0:
        create_sqlite_store(db)
    try:
        return open_client()
    except Exception as e:  # sqlalchemy / MLflow errors: e.g. a store made by another MLflow version
        runs = _query(db, "SELECT count(*) FROM runs")
        raise TrackingStoreError(
            f"MLflow store {db} ({runs if runs is not None else 'unknown number of'} run(s)) cannot be "
            f"opened ({type(e).__name__}: {str(e)[:500]}). Nothing was changed. If another MLflow version "
            f"made it: mlflow db upgrade {SQLITE_PREFIX}{db}; to start a new store instead, move it aside "
            f"(mv {db} {db}.old) or set MLFLOW_TRACKING_URI.") from e


def git_state(cwd: str | Path | None = None) -> tuple[str, str]:
    """(commit, dirty) of the repository holding `cwd`; ('unknown', 'unknown') outside a repository."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=cwd, capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = "true" if run("status", "--porcelain", "--untracked-files=no") else "false"
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


class Tracker:
    """One MLflow run. Use start() (new or resumed run), log_epoch(), log_artifacts(), end()."""

    def __init__(self, tracking_uri: str, experiment: str, enabled: bool = True):
        self.enabled = enabled
        self.uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        db = sqlite_db_path(tracking_uri)
        self._db = db
        self._lock_path = db.with_name(db.name + ".lock") if db else None
        # re-entrant within the process (one object), exclusive across processes
        self._lock = FileLock(self._lock_path, is_singleton=False) if db else None
        self._artifact_root = db.parent / ARTIFACTS_DIRNAME / experiment if db else None
        self._client = None

    def _locked(self):
        if self._lock is None:  # a tracking server serialises its own writes
            return contextlib.nullcontext()
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        return self._lock

    def _get_client(self):
        if self._client is None:
            from mlflow import MlflowClient

            def open_client():
                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)  # opens (or migrates) the store
                return client

            with self._locked():
                self._client = open_sqlite_store(self._db, open_client) if self._db else open_client()
        return self._client

    def _experiment_id(self) -> str:
        client = self._get_client()
        with self._locked():
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                loc = self._artifact_root.as_uri() if self._artifact_root else None
                return client.create_experiment(self.experiment, artifact_location=loc, tags=EXPERIMENT_TAGS)
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            if EXPERIMENT_KIND not in exp.tags:  # made before the tag existed
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, EXPERIMENT_TAGS[EXPERIMENT_KIND])
            return exp.experiment_id

    def start(
        self,
        run_id: str | None,
        run_name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
    ) -> str | None:
        """Continue run `run_id` (a resumed training run) or create a new run; returns its id."""
        if not self.enabled:
            return None
        from mlflow.entities import Param, RunTag

        from mlflow.exceptions import MlflowException

        client = self._get_client()
        if run_id is not None:
            try:
                with self._locked():
                    client.update_run(run_id, status="RUNNING")
                    client.log_batch(run_id, tags=[RunTag("resumed", "true")])
                self.run_id = run_id
                return run_id
            except MlflowException as e:  # another store than the checkpoint's: start a new run there
                print(f"mlflow: cannot continue run {run_id} in {self.uri} ({e}); starting a new run",
                      file=sys.stderr)
        exp_id = self._experiment_id()
        with self._locked():
            unended = client.search_runs([exp_id], filter_string=f"attributes.run_name = '{run_name}' "
                                                                 "and attributes.status = 'RUNNING'")
            run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
            for old in unended:  # an attempt killed before its first checkpoint: nothing resumes it
                client.set_tag(old.info.run_id, "mwnet.replaced_by", run.info.run_id)
                client.set_terminated(old.info.run_id, status="KILLED")
            self.run_id = run.info.run_id
            items = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
                client.log_batch(self.run_id, params=items[i : i + 100])
        return self.run_id

    def log_datasets(self, datasets: Iterable[tuple[str, str, str | Path, dict, str]]) -> None:
        """Log inputs as MLflow datasets (the runs table's Dataset column and its filter): each
        (name, digest, source folder, profile, context), context "training" or "eval". The record
        points at the folder (source type "local"); no data is copied."""
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [DatasetInput(Dataset(name=name, digest=digest, source_type="local",
                                       source=json.dumps({"uri": str(Path(source).absolute())}),
                                       profile=json.dumps(profile, sort_keys=True)),
                               tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
                  for name, digest, source, profile, context in datasets]
        with self._locked():
            self._get_client().log_inputs(self.run_id, datasets=inputs)

    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """CPU, memory, disk and, where NVML is installed (nvidia-ml-py), GPU utilisation and memory,
        every interval_s, through MLflow's fluent run (log_system_metrics) on this run; nothing when
        MLflow cannot (it never fails training)."""
        if not self.enabled or self.run_id is None:
            return
        try:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            mlflow.set_system_metrics_sampling_interval(interval_s)
            mlflow.set_system_metrics_samples_before_logging(1)
            with self._locked():
                self._fluent_run = mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
        except Exception as e:  # optional: never fail training for it
            print(f"mlflow: no system metrics ({type(e).__name__}: {e})", file=sys.stderr)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        with self._locked():
            self._get_client().log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled or self.run_id is None:
            return
        from mlflow.entities import RunTag

        with self._locked():
            self._get_client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, paths: Iterable[str | Path]) -> None:
        if not self.enabled or self.run_id is None:
            return
        client = self._get_client()
        with self._locked():
            for p in paths:
                client.log_artifact(self.run_id, str(p))

    def end(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        if not self.enabled or self.run_id is None:
            return
        if getattr(self, "_fluent_run", None) is not None:  # stops the system-metrics monitor
            import mlflow

            with self._locked():
                mlflow.end_run(status=status)
            self._fluent_run = None
        with self._locked():
            self._get_client().set_terminated(self.run_id, status=status)


SOURCE_TAGS = {"mlflow.source.type": "LOCAL"}  # MLflow's standard source tags (runs table, Source column)


def source_tags(command: str, commit: str) -> dict[str, str]:
    """What ran, as MLflow's UI shows it: the command, its type, and the git commit."""
    return {**SOURCE_TAGS, "mlflow.source.name": command, "mlflow.source.git.commit": commit}


def log_report_run(tracking_uri: str, experiment: str, profile: str, files: Iterable[Path],
                   metrics: Mapping[str, float], tags: Mapping[str, str]) -> str:
    """The assembled table as its own MLflow run ("report/<profile>"): files as artifacts, per-cell
    numbers as metrics. Earlier report runs are kept (each is a version of the table); the new one is
    tagged mwnet.latest = true and the earlier ones of the profile false. One that never finished (its
    process was killed while logging) is closed as KILLED, naming its replacement."""
    from mlflow.entities import Metric

    tracker = Tracker(tracking_uri, experiment)
    client = tracker._get_client()
    exp_id = tracker._experiment_id()
    with tracker._locked():
        earlier = client.search_runs([exp_id], filter_string=f"tags.`mwnet.report` = '{profile}'")
        run = client.create_run(exp_id, run_name=f"report/{profile}",
                                tags={**tags, "mwnet.report": profile, LATEST_TAG: "false"})
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            client.log_batch(run.info.run_id, metrics=items[i : i + 500])
        for f in files:
            client.log_artifact(run.info.run_id, str(f), artifact_path=str(Path(f).parent.name)
                                if Path(f).parent.name in ("figures", "curves") else None)
        client.set_terminated(run.info.run_id, "FINISHED")
        # marked latest only once complete: a report killed midway never hides the previous one
        for old in earlier:
            client.set_tag(old.info.run_id, LATEST_TAG, "false")
            if old.info.status == "RUNNING":  # a report killed while it was logged: never finished
                client.set_tag(old.info.run_id, "mwnet.replaced_by", run.info.run_id)
                client.set_terminated(old.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, LATEST_TAG, "true")
    return run.info.run_id


def plot_weight_curve(losses, weights, path: str | Path, title: str) -> None:
    """PNG of the learned weighting function. Figure + Agg canvas directly: no pyplot, no display,
    no global state, and a faster import than pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(losses, weights)
    ax.set_xlabel("training loss")
    ax.set_ylabel("weight V(loss)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
