"""The time-boxed GPU kit (benchmarks/device_run.sh + collect_device_results.py) never loses a run's progress.

A GPU job has a wall-time limit: a run cut off at the job's deadline must come back as a checkpoint,
be committed under results/reference/partial/, and resume from it in the next job; a finished run
must land in results/reference/gpu/ and drop its partial. `mwnet train` is replaced here by a stand-in
(FAKE_TRAIN) that writes one "epoch" every 0.3 s, so the shell logic runs in seconds.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO

FAKE_TRAIN = r"""#!/usr/bin/env bash
# stand-in for `python -c '...mwnet.cli main' train ... --arch A --out DIR`: FAKE_EPOCHS epochs, 0.3 s each
shift 2  # -c CODE
out=""; arch=""
while [ $# -gt 0 ]; do case "$1" in --out) out="$2"; shift;; --arch) arch="$2"; shift;; esac; shift; done
mkdir -p "$out"; e=0
if [ -f "$out/checkpoint.pt" ]; then e=$(cat "$out/checkpoint.pt"); echo "resuming $out/checkpoint.pt after epoch $e/$FAKE_EPOCHS"; fi
while [ "$e" -lt "$FAKE_EPOCHS" ]; do
  sleep 0.3; e=$((e + 1)); echo "epoch $e/$FAKE_EPOCHS lr 0.1 | test acc 50.00%"; echo "$e" > "$out/checkpoint.pt"
done
echo '{"best_acc": 71.5, "final_acc": 70.9, "wall_time_s": 3.0, "images_per_s": 1000.0, "arch": "'"$arch"'", "profile": "quick"}' > "$out/metrics.json"
echo "epoch,test_acc" > "$out/history.csv"; echo "loss,weight" > "$out/weight_curve.csv"; rm -f "$out/checkpoint.pt"
"""

needs_tools = pytest.mark.skipif(not (shutil.which("timeout") and shutil.which("xargs")), reason="needs coreutils")


@pytest.fixture
def tree(tmp_path):
    """A copy of the two scripts in a scratch repo root, with the fake trainer as PYTHON."""
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "device_run.sh", root / "benchmarks")
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    return root, fake


def run_kit(root, fake, out, stage, epochs):
    env = os.environ | {"OUT": str(out), "PYTHON": str(fake), "FAKE_EPOCHS": str(epochs), "MIN_RUN_S": "1"}
    r = subprocess.run(["bash", "benchmarks/device_run.sh", stage], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return (out / "log.txt").read_text()


def collect(root, out, results, bench):
    archives = [str(p) for p in sorted(out.glob("*.tgz"))]
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "collect_device_results.py"), *archives,
                        "--commit", "abc1234", "--device", "test GPU", "--results", str(results),
                        "--bench", str(bench)], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_tools
def test_cut_runs_come_back_as_checkpoints_and_resume_in_the_next_job(tree, tmp_path):
    root, fake = tree
    runs = "cifar10/imbalance_100/1-100-1,cifar10/imbalance_100/ce,cifar10/imbalance_100/1-50-1"
    # job 1: 2 at a time until +2 s of 10 epochs at 0.3 s: both cut after a few epochs, the third
    # never starts (less than MIN_RUN_S left)
    log = run_kit(root, fake, tmp_path / "out1", f"train:2:2:{runs}", epochs=10)
    assert log.count("exit 124") == 2 and "skip cifar10/imbalance_100/1-50-1" in log
    with tarfile.open(tmp_path / "out1" / "partial_1.tgz") as tf:
        names = tf.getnames()
    assert sorted(n for n in names if n.endswith(".pt")) == [
        "models/gpu/cifar10/imbalance_100/1-100-1/seed1/checkpoint.pt",
        "models/gpu/cifar10/imbalance_100/ce/seed1/checkpoint.pt"]
    results = root / "results" / "reference"
    table = collect(root, tmp_path / "out1", results, tmp_path / "bench")
    partial = results / "partial" / "cifar10" / "imbalance_100" / "1-100-1" / "seed1"
    done_before = int((partial / "checkpoint.pt").read_text())
    assert 1 <= done_before < 10 and "unfinished: epoch" in table

    # job 2, a new machine (models/ gone): the committed checkpoint is picked up, the run finishes
    shutil.rmtree(root / "models")
    log = run_kit(root, fake, tmp_path / "out2", "train:30:2:cifar10/imbalance_100/1-100-1", epochs=10)
    assert "exit 0" in log and not list((tmp_path / "out2").glob("partial_*.tgz"))
    run_log = (root / "models/gpu/cifar10/imbalance_100/1-100-1/seed1.log").read_text()
    assert f"resuming models/gpu/cifar10/imbalance_100/1-100-1/seed1/checkpoint.pt after epoch {done_before}/10" in run_log
    assert run_log.count("epoch ") == 10 - done_before + 1  # the resume line + the epochs left
    table = collect(root, tmp_path / "out2", results, tmp_path / "bench")
    final = results / "gpu" / "runs" / "quick" / "cifar10" / "imbalance_100" / "1-100-1" / "seed1"
    assert "| cifar10 imbalance_100 1-100-1 seed1 | 71.50 | 70.90 |" in table
    assert {p.name for p in final.iterdir()} == {"metrics.json", "history.csv", "weight_curve.csv", "train.log",
                                                 "provenance.json"}
    assert json.loads((final / "provenance.json").read_text())["device"] == "test GPU"
    both = (final / "train.log").read_text()  # both jobs' logs, oldest first
    assert both.index("epoch 1/10") < both.index("resuming") < both.index("epoch 10/10")
    assert not partial.exists()  # finished: its partial is gone
    # the CE run was not run again: its partial stays for the next job
    assert (results / "partial" / "cifar10" / "imbalance_100" / "ce" / "seed1" / "checkpoint.pt").is_file()
