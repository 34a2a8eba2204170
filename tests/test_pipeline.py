"""The Snakemake pipeline (Snakefile, workflow/) and dvc.yaml, run in temporary copies of the repo.

Fast tests are dry runs. The end-to-end tests use a fake `mwnet` (config key `mwnet`) that writes
outputs in the contract's formats in milliseconds and logs every call, so they check what reruns
without training anything; they are marked slow because each Snakemake or DVC start costs ~1 s.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ["Snakefile", "workflow", "profiles", "params", "dvc.yaml", ".dvc/config", ".dvcignore"]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}

FAKE_MWNET = r'''
"""Stand-in for the mwnet CLI: same arguments and output files, no data, no training."""
import argparse, json, os, shutil, sys, tempfile
from pathlib import Path
from mwnet import paths
from mwnet.config import load_params

def log(*words):
    with open(os.environ["FAKE_MWNET_LOG"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")

argv = sys.argv[1:]
if argv[0] in ("report", "plan"):  # the real commands: they only read what the fake runs wrote
    from mwnet.cli import main
    if argv[0] == "report":  # the plan is part of the report job: one call counted
        log("report")
    sys.exit(main(argv + (["--no-tracking"] if argv[0] == "report" else [])))
ap = argparse.ArgumentParser()
ap.add_argument("cmd", nargs="+")
for a in ("--dataset", "--corruption", "--arch", "--seed", "--profile", "--out"):
    ap.add_argument(a)
ap.add_argument("--params", default="params")
ap.add_argument("--restart", action="store_true")
a = ap.parse_args(argv)
p = load_params(a.params, profile=a.profile)
if a.cmd == ["data", "fetch"]:
    d = paths.raw_dir(p.data.raw_root, a.dataset)
    d.mkdir(parents=True)
    (d / "batches.meta").write_text("fake")
    log("fetch", a.dataset)
elif a.cmd == ["data", "corrupt"]:
    d = paths.split_dir(p.data.corrupted_root, a.dataset, a.corruption, a.seed)
    if d.exists():
        shutil.rmtree(d)  # the real tool replaces the folder whole
    d.mkdir(parents=True)
    (d / paths.SPLIT_FILE).write_bytes(b"fake")
    (d / paths.SUMMARY_FILE).write_text(json.dumps(p.corruptions[a.corruption].model_dump(mode="json")))
    log("corrupt", a.dataset, a.corruption, a.seed)
elif a.cmd == ["train"]:
    out = Path(a.out)
    ckpt = out / paths.CHECKPOINT_FILE
    resumed = ckpt.exists() and not a.restart
    log("train", a.dataset, a.corruption, a.arch, a.seed, "restart" if a.restart else "", "resumed" if resumed else "")
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAKE_MWNET_FAIL"):
        ckpt.write_text("epoch 1")
        sys.exit(1)
    ckpt.unlink(missing_ok=True)
    recipe = p.recipe_for(a.corruption)
    acc = 40 + sum(map(ord, a.dataset + a.corruption + a.arch)) % 50
    rows = [f"{e},0.1,1,50,1,0.5,1,{acc - recipe.epochs + e},1,1" for e in range(1, recipe.epochs + 1)]
    (out / "history.csv").write_text(
        "epoch,lr,train_loss,train_acc,meta_loss,mean_weight,test_loss,test_acc,epoch_time_s,images_per_s\n"
        + "\n".join(rows) + "\n")
    (out / "weight_curve.csv").write_text("loss,weight\n0,0.6\n10,0.2\n")
    (out / "model.pt").write_bytes(b"fake")
    (out / "metrics.json").write_text(json.dumps({
        "best_acc": acc + 0.5, "final_acc": acc, "best_epoch": 1, "epochs": recipe.epochs,
        "dataset": a.dataset, "corruption": a.corruption, "arch": a.arch, "seed": int(a.seed),
        "profile": p.profile, "recipe": recipe.model_dump(mode="json"), "threads": os.environ.get("OMP_NUM_THREADS"),
    }))
else:
    sys.exit(f"fake mwnet: unknown command {argv}")
'''


def copy_pipeline(dest: Path) -> Path:
    for name in PIPELINE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "local.yaml"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    return dest


def seed_step_times(cache_dir: Path, params_dir: Path, seconds) -> None:
    """Step times for every backbone of every profile, without measuring: seconds(backbone) -> per step.
    The plan (Snakemake onstart) then costs nothing and its estimate is known to the test."""
    from mwnet.config import load_params
    from mwnet.plan import StepTimes, available_profiles, seed_cache

    old = os.environ.get("MWNET_CACHE_DIR")
    os.environ["MWNET_CACHE_DIR"] = str(cache_dir)
    try:
        entries = []
        for name in available_profiles(params_dir):
            for r in load_params(params_dir, profile=name).recipes.values():
                t = seconds(r.backbone)
                for threads in (1, 2):
                    entries.append((r.backbone, r.batch_size, "cpu", threads, StepTimes(r.batch_size, t, 4 * t, t / 300)))
        seed_cache(entries)
    finally:
        if old is None:
            del os.environ["MWNET_CACHE_DIR"]
        else:
            os.environ["MWNET_CACHE_DIR"] = old


class Workspace:
    """A copy of the pipeline files with a fake mwnet; run snakemake / dvc there. Step times for the
    plan are seeded small (MWNET_CACHE_DIR), so the CPU guard lets every profile through."""

    def __init__(self, root: Path, fake: bool = True):
        self.root = copy_pipeline(root / "repo")
        self.log = root / "calls.log"
        self.fake = root / "fake_mwnet.py"
        self.fake.write_text(FAKE_MWNET)
        self.env = {**ENV, "FAKE_MWNET_LOG": str(self.log), "MWNET_CACHE_DIR": str(root / "cache")}
        seed_step_times(root / "cache", self.root / "params", lambda backbone: 1e-4)
        self.config = [f"mwnet={sys.executable} {self.fake}"] if fake else []

    def snakemake(self, *args, config=(), check=True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "snakemake", "--cores", "4", *args]
        if self.config or config:
            cmd += ["--config", *self.config, *config]
        r = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and r.returncode:
            raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def calls(self) -> list[str]:
        """Calls of the fake mwnet since the last time this was asked."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        self.log.unlink()
        return lines

    def edit(self, rel: str, fn) -> None:
        path = self.root / rel
        data = yaml.safe_load(path.read_text())
        fn(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def write_local(self, overlay: dict) -> None:
        (self.root / "params" / "local.yaml").write_text(yaml.safe_dump(overlay))


def job_counts(dry_run_output: str) -> dict[str, int]:
    """rule -> job count from Snakemake's 'Job stats' table (empty when there is nothing to do)."""
    counts = {}
    if "Job stats:" not in dry_run_output:
        return counts
    for line in dry_run_output.split("Job stats:")[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def count(calls: list[str], kind: str, *words: str) -> int:
    return sum(1 for c in calls if c.split()[0] == kind and all(w in c.split() for w in words))


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path)


# ---------------------------------------------------------------------------------- dry runs


def test_dry_run_has_one_job_per_cell_and_seed(ws):
    r = ws.snakemake("-n", "all")
    assert job_counts(r.stdout) == {"fetch": 2, "corrupt": 6, "train": 42, "report": 1, "all": 1}
    assert "models/full/cifar100/uniform_40/1-10-10-10-1/seed1/spec-" in r.stdout


def test_profile_comes_from_config_or_run_yaml(ws):
    r = ws.snakemake("-n", "runs", config=["profile=quick"])
    assert job_counts(r.stdout)["train"] == 42
    assert "models/quick/" in r.stdout and "models/full/" not in r.stdout
    ws.edit("params/run.yaml", lambda d: d.update(profile="quick"))
    assert "models/quick/" in ws.snakemake("-n", "runs").stdout


def test_more_seeds_more_runs(ws):
    ws.edit("params/grid.yaml", lambda d: d.update(seeds=[1, 2, 3]))
    assert job_counts(ws.snakemake("-n", "all").stdout) == {
        "fetch": 2, "corrupt": 18, "train": 126, "report": 1, "all": 1}


BAD_PARAMS = {
    "unknown key": ("params/recipes.yaml", lambda d: d["flip"].update(epoch=3), ["recipes.yaml", "flip.epoch", "unknown key"]),
    "wrong type": ("params/recipes.yaml", lambda d: d["imbalance"].update(epochs="many"),
                   ["recipes.yaml", "imbalance.epochs", "'many'"]),
    "out of range": ("params/corruptions.yaml", lambda d: d["uniform_40"].update(rate=1.5),
                     ["corruptions.yaml", "uniform_40", "rate", "1.5", "less than 1"]),
    "unknown shape": ("params/grid.yaml", lambda d: d.update(archs=["1-100-1", "1-x-1"]),
                      ["grid.yaml", "archs", "1-x-1", "1-h1-...-hk-1"]),
    "unknown corruption": ("params/grid.yaml", lambda d: d.update(corruptions=["imbalance_100", "uniform_4"]),
                           ["grid.yaml", "corruptions.1", "'uniform_4'", "flip_40"]),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_params_stop_before_any_job(ws, case):
    rel, fn, expected = BAD_PARAMS[case]
    ws.edit(rel, fn)
    r = ws.snakemake("all", check=False)  # a real run, not a dry run: nothing may start
    assert r.returncode != 0
    assert "mwnet: error:" in r.stderr and "Traceback" not in r.stderr + r.stdout
    for text in expected:
        assert text in r.stderr, (text, r.stderr)
    assert not ws.calls() and not (ws.root / "data").exists() and not (ws.root / "models").exists()


def test_threads_per_training_job_come_from_params_and_a_bad_override_stops_before_any_job(ws):
    r = ws.snakemake("all", config=["train_threads=0"], check=False)
    assert r.returncode != 0 and "train_threads=0: must be a whole number >= 1" in r.stderr
    assert not ws.calls() and not (ws.root / "models").exists()
    ws.edit("params/grid.yaml", lambda d: d.update(datasets=["cifar10"], corruptions=["flip_40"], archs=["1-10-1"]))
    ws.edit("params/run.yaml", lambda d: d.update(train_threads=2))
    r = ws.snakemake("all")
    assert "2 thread(s) per run" in r.stderr  # the plan
    metrics = [json.loads(m.read_text()) for m in (ws.root / "models").rglob("metrics.json")]
    assert metrics and {m["threads"] for m in metrics} == {"2"}  # the fake records OMP_NUM_THREADS


def test_bad_profile_name_is_reported(ws):
    r = ws.snakemake("-n", "all", config=["profile=quik"], check=False)
    assert r.returncode != 0 and "profile 'quik'" in r.stderr and "quick" in r.stderr


# ---------------------------------------------------------------------------------- fake runs


def scramble_mtimes(root: Path) -> None:
    """What `dvc checkout` / `dvc pull` do to a workspace: files come back with arbitrary mtimes."""
    files = [p for d in ("data", "models", "results") for p in (root / d).rglob("*") if p.is_file()]
    random.Random(0).shuffle(files)
    for i, f in enumerate(files):
        os.utime(f, (1e9 + i, 1e9 + i))


def nothing_to_do(r: subprocess.CompletedProcess) -> bool:
    return "Nothing to be done" in r.stdout + r.stderr and not job_counts(r.stdout)


@pytest.mark.slow
def test_params_edit_reruns_only_affected_jobs(ws):
    ws.edit("params/grid.yaml", lambda d: d.update(archs=["1-50-1", "1-10-10-1"]))  # 12 cells keep it quick
    ws.snakemake("all")
    calls = ws.calls()
    assert (count(calls, "fetch"), count(calls, "corrupt"), count(calls, "train"), count(calls, "report")) == (2, 6, 18, 1)
    md = (ws.root / "results" / "table1.md").read_text()
    assert re.search(r"\| 1-50-1 \| \d+\.\d\d \(73\.50; [+-]\d+\.\d\d; vs CE [+-]\d+\.\d\d\)", md), md
    metrics = json.loads((ws.root / "models/full/cifar10/flip_40/1-50-1/seed1/metrics.json").read_text())
    assert metrics["threads"] == "1"  # OMP_NUM_THREADS follows the job's threads
    assert nothing_to_do(ws.snakemake("-n", "all"))

    # DVC restores files with new mtimes and without .snakemake/: still nothing to do
    scramble_mtimes(ws.root)
    shutil.rmtree(ws.root / ".snakemake")
    assert nothing_to_do(ws.snakemake("-n", "all"))

    # a deleted run folder is redone (and the report); deleted splits are not rebuilt while no run needs them
    shutil.rmtree(ws.root / "models/full/cifar100/imbalance_100/1-10-10-1")
    ws.snakemake("all")
    assert ws.calls() == ["train cifar100 imbalance_100 1-10-10-1 1  ", "report"]
    shutil.rmtree(ws.root / "data/corrupted")
    assert nothing_to_do(ws.snakemake("-n", "all"))

    # one corruption's recipe: only its cells retrain (from scratch: their old checkpoints are foreign)
    ws.edit("params/recipes.yaml", lambda d: d["flip"]["weighting_optimizer"].update(lr=2.0e-3))
    ws.snakemake("all")
    calls = ws.calls()
    assert count(calls, "train", "flip_40", "restart") == 4  # MW-Net: new params, old checkpoints foreign
    # CE has no weighting net, but its split was deleted above and is rebuilt: it trains again too
    assert count(calls, "train") == 6 == count(calls, "train", "flip_40")
    assert count(calls, "corrupt") == 2 == count(calls, "corrupt", "flip_40")  # splits deleted above: rebuilt
    assert (count(calls, "fetch"), count(calls, "report")) == (0, 1)
    flip = ws.root / "models/full/cifar10/flip_40/1-50-1/seed1"
    assert len(list(flip.glob("spec-*.json"))) == 1 and not list(flip.glob("spec-*.started"))

    # a corruption's definition: its splits and its cells
    ws.edit("params/corruptions.yaml", lambda d: d["uniform_40"].update(rate=0.3))
    ws.snakemake("all")
    calls = ws.calls()
    assert count(calls, "corrupt") == 2 == count(calls, "corrupt", "uniform_40")
    assert count(calls, "train") == 6 == count(calls, "train", "uniform_40")  # 4 MW-Net + 2 CE

    # a report setting: only the report
    ws.edit("params/report.yaml", lambda d: d.update(decimals=1))
    ws.snakemake("all")
    assert ws.calls() == ["report"]

    # the quick profile is a separate set of runs beside the full one
    r = ws.snakemake("-n", "all", config=["profile=quick"])
    assert job_counts(r.stdout) == {"corrupt": 2, "train": 18, "report": 1, "all": 1}  # + imbalance splits (deleted)


@pytest.mark.slow
def test_killed_training_leaves_no_stamp_and_resumes(ws):
    ws.edit("params/grid.yaml", lambda d: d.update(datasets=["cifar10"], corruptions=["imbalance_100"],
                                                    archs=["1-100-1"], baselines=[]))
    ws.env["FAKE_MWNET_FAIL"] = "1"  # the fake writes a checkpoint, then dies
    r = ws.snakemake("all", check=False)
    assert r.returncode != 0
    run = ws.root / "models/full/cifar10/imbalance_100/1-100-1/seed1"
    assert (run / "checkpoint.pt").exists() and not list(run.glob("spec-*.json"))
    assert not (ws.root / "results").exists()
    del ws.env["FAKE_MWNET_FAIL"]
    ws.calls()
    shutil.rmtree(ws.root / ".snakemake")  # even without Snakemake's own record of incomplete jobs
    ws.snakemake("all")
    calls = ws.calls()
    assert count(calls, "train", "resumed") == 1 and count(calls, "train", "restart") == 0
    assert nothing_to_do(ws.snakemake("-n", "all"))


# ---------------------------------------------------------------------------------- DVC


def dvc(ws: Workspace, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "dvc"), *args]
    r = subprocess.run(cmd, cwd=cwd or ws.root, env=ws.env, capture_output=True, text=True)
    if r.returncode:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture
def dvc_ws(tmp_path):
    """A workspace where `dvc repro` runs the pipeline's stages with the fake mwnet."""
    ws = Workspace(tmp_path)
    ws.edit("params/grid.yaml", lambda d: d.update(archs=["1-50-1", "1-10-10-1"]))
    shutil.copytree(REPO / "mwnet", ws.root / "mwnet", ignore=shutil.ignore_patterns("__pycache__"))  # a dep
    profile = tmp_path / "snakemake-profile"  # how the stages' `snakemake` gets the fake: a global profile
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({"config": ws.config}))
    ws.env.update(SNAKEMAKE_PROFILE=str(profile), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    dvc(ws, "config", "--local", "core.no_scm", "true")  # the copy is not a git repository
    return ws


@pytest.mark.slow
def test_dvc_repro_checkout_and_pull(dvc_ws, tmp_path):
    ws = dvc_ws
    dvc(ws, "repro")
    calls = ws.calls()
    assert (count(calls, "fetch"), count(calls, "corrupt"), count(calls, "train"), count(calls, "report")) == (2, 6, 18, 1)
    assert "up to date" in dvc(ws, "status").stdout
    assert "results/metrics.json" in dvc(ws, "metrics", "show").stdout
    dvc(ws, "plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()
    v1 = {n: (ws.root / n).read_text() for n in ("dvc.lock", "params/recipes.yaml")}

    # one corruption's recipe: dvc repro retrains only that corruption's cells
    ws.edit("params/recipes.yaml", lambda d: d["flip"]["weighting_optimizer"].update(lr=2.0e-3))
    assert "runs" in dvc(ws, "status").stdout
    dvc(ws, "repro")
    calls = ws.calls()
    assert count(calls, "train") == 4 == count(calls, "train", "flip_40")
    assert (count(calls, "fetch"), count(calls, "corrupt"), count(calls, "report")) == (0, 0, 1)

    # back to the first version (as after `git checkout v1`): dvc checkout restores its outputs, with
    # fresh mtimes and .snakemake/ recording the newer version: Snakemake has nothing to do
    for name, text in v1.items():
        (ws.root / name).write_text(text)
    dvc(ws, "checkout", "--force")
    assert "up to date" in dvc(ws, "status").stdout
    assert nothing_to_do(ws.snakemake("-n", "all"))

    # a fresh clone: no outputs, no .snakemake/; dvc pull from a local remote, then nothing to do
    dvc(ws, "remote", "add", "--local", "-d", "store", str(tmp_path / "remote"))
    dvc(ws, "push")
    clone = tmp_path / "clone"
    shutil.copytree(ws.root, clone, ignore=shutil.ignore_patterns("data", "models", "results", ".snakemake", "cache"))
    dvc(ws, "pull", cwd=clone)
    ws.root = clone
    assert "up to date" in dvc(ws, "status").stdout
    assert nothing_to_do(ws.snakemake("-n", "all"))
    # ... and an edit there reruns exactly its cells, without Snakemake's metadata
    ws.edit("params/recipes.yaml", lambda d: d["imbalance"].update(lr_gamma=0.2))
    assert job_counts(ws.snakemake("-n", "all").stdout) == {"train": 6, "report": 1, "all": 1}  # 4 MW-Net + 2 CE


# ---------------------------------------------------------------------------------- offline data script

OFFLINE = REPO / "workflow" / "scripts" / "offline_data.py"


def run_offline(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(OFFLINE), *map(str, args)], capture_output=True, text=True, env=ENV)


def test_offline_data_sets_sources_and_never_overwrites_local_yaml(tmp_path):
    params = copy_pipeline(tmp_path / "repo") / "params"
    shared = tmp_path / "shared"
    # stand-ins for the two export scripts, so the test needs no real data
    for ds, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        (shared / ds).mkdir(parents=True)
        (shared / ds / "export.py").write_text(f"import sys, pathlib; (pathlib.Path(sys.argv[1]) / '{folder}').mkdir()")
    r = run_offline("--out", tmp_path / "src", "--shared", shared, "--params", params)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "src" / "cifar-10-batches-py").is_dir() and (tmp_path / "src" / "cifar-100-python").is_dir()
    local = yaml.safe_load((params / "local.yaml").read_text())
    for ds in ("cifar10", "cifar100"):  # both real: nothing is accepted unverified
        assert local["data"]["sources"][ds] == {"location": str(tmp_path / "src"), "allow_unverified": False}
    assert run_offline("--out", tmp_path / "src", "--shared", shared, "--params", params).returncode == 0  # idempotent
    # an older version of the script's own file is replaced; a user's file never is
    (params / "local.yaml").write_text("# Written by workflow/scripts/offline_data.py: old\ndata: {}\n")
    assert run_offline("--out", tmp_path / "src", "--shared", shared, "--params", params).returncode == 0
    assert yaml.safe_load((params / "local.yaml").read_text()) == local
    (params / "local.yaml").write_text("data: {raw_root: /elsewhere}\n")
    r = run_offline("--out", tmp_path / "src", "--shared", shared, "--params", params)
    assert r.returncode != 0 and "exists with other settings" in r.stderr
    assert (params / "local.yaml").read_text() == "data: {raw_root: /elsewhere}\n"
    (params / "local.yaml").unlink()
    r = run_offline("--out", tmp_path / "src", "--shared", tmp_path / "nothing", "--params", params)
    assert r.returncode != 0 and "no offline CIFAR copies" in r.stderr and not (params / "local.yaml").exists()


# ---------------------------------------------------------------------------------- plan and CPU guard


def _paper_backbones_slow(backbone) -> float:
    """Seconds per step: 1 s for the paper's backbones (ResNet-32, WRN-28-10), tiny for the others."""
    return 1.0 if (backbone.name, backbone.depth) in {("resnet", 32), ("wrn", 28)} else 1e-4


@pytest.mark.slow
def test_cpu_guard_stops_the_full_profile_and_lets_quick_through(ws, tmp_path):
    seed_step_times(tmp_path / "cache", ws.root / "params", _paper_backbones_slow)
    r = ws.snakemake("all", check=False)
    assert r.returncode != 0
    assert "mwnet plan: profile full on cpu" in r.stderr and "42 runs: 0 done, 42 to train" in r.stderr
    assert "would take about" in r.stderr and "cpu_max_hours = 24" in r.stderr and "Nothing was started" in r.stderr
    assert "mini (about" in r.stderr and "quick (about" in r.stderr and "allow_long_cpu_run=true" in r.stderr
    assert ws.calls() == [] and not (ws.root / "models").exists() and not (ws.root / "data").exists()

    ws.edit("params/grid.yaml", lambda d: d.update(archs=["1-100-1"]))  # 12 runs keep the rest quick
    r = ws.snakemake("all", config=["profile=quick"])
    assert "mwnet plan: profile quick on cpu" in r.stderr and "12 runs: 0 done, 12 to train" in r.stderr
    assert re.search(r"grid \(quick\): \d+ of 12 runs done, \d+ to go", r.stderr), "per-job progress line"
    assert "table:   results/table1.md" in r.stderr  # the closing summary
    assert count(ws.calls(), "train") == 12

    r = ws.snakemake("all", config=["allow_long_cpu_run=true"])  # the user's explicit choice
    assert "would take about" not in r.stderr and count(ws.calls(), "train") == 12


def test_mwnet_plan_adds_up_measured_step_times(tmp_path, monkeypatch, capsys):
    """The estimate is epochs x (steps x step time + test images x eval time), from the cache."""
    from mwnet.cli import main
    from mwnet.config import load_params
    from mwnet.plan import make_plan, run_estimate

    params_dir = copy_pipeline(tmp_path / "repo") / "params"
    seed_step_times(tmp_path / "cache", params_dir, lambda b: 0.5)
    monkeypatch.setenv("MWNET_CACHE_DIR", str(tmp_path / "cache"))
    p = load_params(params_dir, profile="mini")
    # imbalance 100 on CIFAR-10: 12,380 images, 124 steps of 100; 10 epochs; 10,000 test images
    expect_mw = 10 * (124 * 2.0 + 10000 * 0.5 / 300)
    assert run_estimate(p, "cifar10", "imbalance_100", "1-100-1", "cpu", measure=False) == pytest.approx(expect_mw)
    expect_ce = 10 * (124 * 0.5 + 10000 * 0.5 / 300)
    assert run_estimate(p, "cifar10", "imbalance_100", "ce", "cpu", measure=False) == pytest.approx(expect_ce)
    plan = make_plan(p, cores=2, device="cpu", measure=False)
    assert len(plan.runs) == 9 and plan.at_once == min(2, os.cpu_count())
    assert main(["plan", "--params", str(params_dir), "--profile", "mini", "--cores", "2"]) == 0
    out = capsys.readouterr().out
    assert "9 runs: 0 done, 9 to train" in out and "cifar10 imbalance_100: 1 MW-Net run(s)" in out


def test_snakemake_html_report_holds_the_table_figures_and_plan(ws):
    """`snakemake --report report.html` after a run of the grid: the table, the figures and the plan
    are in it, each as the pipeline wrote it; the report's own outputs rerun nothing afterwards."""
    ws.snakemake("all")
    ws.snakemake("--report", "report.html")
    sys.path.insert(0, str(REPO / "workflow" / "scripts"))
    try:
        from report_html_check import check
    finally:
        sys.path.pop(0)
    assert check(ws.root / "report.html", ws.root / "results") == []
    dry = ws.snakemake("-n", "all")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_lint_is_clean_but_for_conda_and_containers(ws):
    out = ws.snakemake("--lint", check=False)
    titles = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip().startswith("* ")]
    assert titles and all(t.startswith("* Specify a conda environment or container") for t in titles), titles
