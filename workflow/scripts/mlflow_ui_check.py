"""Check the MLflow store as a user browses it: serve it with `mlflow ui` on 127.0.0.1, ask the REST
API what the runs table shows (a dataset and a source on every training run, the table in the report
run), and take a headless-Chromium screenshot of the runs page.

    python workflow/scripts/mlflow_ui_check.py [--store sqlite:///mlflow.db] [--experiment NAME]
                                               [--screenshot FILE.png]

--experiment defaults to params/tracking.yaml's experiment for params/run.yaml's profile (see
mwnet.tracking.experiment_name); --profile picks another. The screenshot needs Debian's `chromium`
(skipped with a note when absent). Exit status 1, naming what is missing, when a check fails. The
server is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, query: dict | None = None, body: dict | None = None) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow ui exited with status {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer at {base} within {timeout:.0f} s")


def check_runs(base: str, experiment: str) -> tuple[str, list[str]]:
    """(experiment id, problems): every training run has training and eval datasets and source tags;
    the latest report run (one, tag mwnet.latest) holds the table."""
    exp = api(base, "experiments/get-by-name", {"experiment_name": experiment})["experiment"]
    runs, token = [], None
    while True:
        body = {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}
        if token:
            body["page_token"] = token
        page = api(base, "runs/search", body=body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            break
    problems = []
    tags_of = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}  # noqa: E731
    training = [r for r in runs if "mwnet.report" not in tags_of(r)]
    reports = [r for r in runs if "mwnet.report" in tags_of(r)]
    if not training:
        problems.append(f"experiment {experiment}: no training runs")
    for r in training:
        name = r["info"].get("run_name", r["info"]["run_id"])
        contexts = {t["value"] for d in r.get("inputs", {}).get("dataset_inputs", []) for t in d.get("tags", [])
                    if t["key"] == "mlflow.data.context"}
        if not {"training", "eval"} <= contexts:
            problems.append(f"run {name}: dataset inputs {sorted(contexts) or 'none'} (want training and eval)")
        tags = tags_of(r)
        for key in ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"):
            if not tags.get(key):
                problems.append(f"run {name}: no tag {key}")
    latest = [r for r in reports if tags_of(r).get("mwnet.latest") == "true"]
    if len(latest) != 1:
        problems.append(f"experiment {experiment}: {len(latest)} of {len(reports)} report runs tagged "
                        "mwnet.latest=true (want 1)")
    else:
        files = {f["path"] for f in api(base, "artifacts/list", {"run_id": latest[0]["info"]["run_id"]}).get("files", [])}
        missing = {"table1.md", "table1.csv", "metrics.json", "figures"} - files
        if missing:
            problems.append(f"report run: artifacts {sorted(missing)} missing (has {sorted(files)})")
    print(f"mlflow ui check: {experiment}: {len(training)} training runs, {len(reports)} report run(s)")
    return exp["experiment_id"], problems


def screenshot(url: str, out: Path) -> bool:
    chromium = next((c for c in ("chromium", "chromium-browser", "google-chrome") if _which(c)), None)
    if chromium is None:
        print("mlflow ui check: no chromium here: screenshot skipped (apt-get install chromium)")
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1800,800",
               "--virtual-time-budget=20000", f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    print(f"mlflow ui check: screenshot of {url} -> {out}")
    return True


def _which(name: str) -> bool:
    return any(os.access(Path(d) / name, os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep) if d)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None, help="backend store URI (default: params/tracking.yaml's)")
    ap.add_argument("--experiment", default=None, help="experiment name (default: the profile's)")
    ap.add_argument("--params", default=str(REPO / "params"))
    ap.add_argument("--profile", default=None, help="profile whose experiment to check (default: params/run.yaml)")
    ap.add_argument("--screenshot", type=Path, default=None, help="PNG of the runs page (needs chromium)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from mwnet.config import load_params
    from mwnet.tracking import experiment_name, resolve_tracking_uri

    p = load_params(args.params, profile=args.profile)
    store = args.store or resolve_tracking_uri(p.tracking.tracking_uri)
    experiment = args.experiment or experiment_name(p.tracking.experiment, p.profile)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_up(base, proc)
        exp_id, problems = check_runs(base, experiment)
        if args.screenshot:
            # workflowType: MLflow 3 opens its GenAI view otherwise (the "Model training" toggle)
            screenshot(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning", args.screenshot)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    for line in problems:
        print(f"FAIL: {line}", file=sys.stderr)
    print("mlflow ui check: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
