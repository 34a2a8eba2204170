"""The training loop: outputs, determinism, resume after a kill, checkpoint checks, CLI errors.

Runs are tiny (fake CIFAR-10, a depth-8 width-4 ResNet, 200 training images, 3 epochs) and on CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mwnet import paths
from mwnet.cli import main
from mwnet.compute import bf16_native
from mwnet.config import load_params

REPO = Path(__file__).resolve().parents[1]
CONTRACT_METRICS = {
    "best_acc", "final_acc", "best_epoch", "epochs", "wall_time_s", "images_per_s", "device", "dataset",
    "corruption", "arch", "seed", "profile", "split_md5", "raw_verified", "mlflow_run_id", "recipe",
    "estimated_wall_time_s", "precision", "memory_format", "threads", "augmentation",
    "git_commit", "git_dirty", "torch_version", "segments",
}
HISTORY_HEADER = ("epoch,lr,train_loss,train_acc,meta_loss,mean_weight,mean_weight_clean,mean_weight_noisy,test_loss,"
                  "test_acc,epoch_time_s,images_per_s")
TIMING_COLUMNS = {"epoch_time_s", "images_per_s"}

# A profile smaller than quick: every recipe shrunk, meta set 10 per class.
TINY_PROFILE = {
    "recipes": {
        name: {
            "backbone": {"name": "resnet", "depth": 8, "width": 4, "dropout": 0.0},
            "epochs": 3, "lr_milestones": [1], "batch_size": 50, "meta_batch_size": 50,
            "eval_batch_size": 64, "train_subset": 200, "test_subset": 100,
        }
        for name in ("imbalance", "uniform", "flip", "stable")
    },
    "corruptions": {"uniform_40": {"meta_total": 100}, "flip_40": {"meta_total": 100}},
}


def _edit_yaml(path: Path, update: dict) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    data.update(update)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def make_env(
    root: Path, profile: str = "tiny", corruptions=("uniform_40",), seed: int = 1,
    train_per_class: int = 40, test_per_class: int = 10,
) -> Path:
    """A params copy whose data, models and MLflow store live under `root`, with fake CIFAR-10 built
    and corrupted for `corruptions`; `profile` is made the active one. Returns the params folder."""
    from mwnet.data.synthetic import write_fake_cifar

    params = root / "params"
    shutil.copytree(REPO / "params", params, ignore=shutil.ignore_patterns("local.yaml"))
    (params / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(TINY_PROFILE))
    _edit_yaml(params / "run.yaml", {"profile": profile})
    _edit_yaml(params / "data.yaml", {
        "raw_root": str(root / "raw"), "corrupted_root": str(root / "corrupted"),
        "sources": {d: {"location": str(root / "raw"), "allow_unverified": True} for d in ("cifar10", "cifar100")},
    })
    _edit_yaml(params / "tracking.yaml", {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
    _edit_yaml(params / "report.yaml", {"models_root": str(root / "models")})
    write_fake_cifar("cifar10", root / "raw", train_per_class=train_per_class, test_per_class=test_per_class, seed=0)
    for c in corruptions:
        rc = main(["data", "corrupt", "--dataset", "cifar10", "--corruption", c, "--seed", str(seed),
                   "--params", str(params)])
        assert rc == 0, f"mwnet data corrupt {c} failed"
    return params


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def model_state(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)


def assert_same_training(a: Path, b: Path) -> None:
    """Same final parameters bit-for-bit and the same history (timings aside)."""
    ma, mb = model_state(a), model_state(b)
    for part in ("model", "vnet"):
        assert ma[part].keys() == mb[part].keys()
        for k in ma[part]:
            assert torch.equal(ma[part][k], mb[part][k]), f"{part}.{k} differs"
    ha, hb = read_csv(a / "history.csv"), read_csv(b / "history.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]  # noqa: E731
    assert strip(ha) == strip(hb)
    assert (a / "weight_curve.csv").read_text() == (b / "weight_curve.csv").read_text()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train_env")
    return load_params(make_env(root)), root


@pytest.fixture(scope="module")
def full_run(env):
    """One uninterrupted tiny run (no MLflow)."""
    from mwnet.train import train_run

    params, root = env
    out = root / "runs" / "full"
    t0 = time.perf_counter()
    metrics = train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False)
    print(f"tiny run: {time.perf_counter() - t0:.2f} s")
    return out, metrics


# ------------------------------------------------------------------------------------------------



def test_step_gets_the_scheduled_lr(env, tmp_path, monkeypatch):
    """The virtual step must use the classifier's current scheduled lr (protocol step 3): record the lr
    each MW-Net step is called with, across the milestone, and compare with the optimiser's schedule."""
    from mwnet.meta_step import MetaWeightStep
    from mwnet.train import train_run

    params, _ = env
    seen = []
    original = MetaWeightStep.step

    def recording_step(self, x, y, x_meta, y_meta, lr):
        seen.append((lr, self.model_opt.param_groups[0]["lr"]))
        return original(self, x, y, x_meta, y_meta, lr)

    monkeypatch.setattr(MetaWeightStep, "step", recording_step)
    train_run(params, "cifar10", "uniform_40", "1-10-1", 1, tmp_path / "run", device="cpu", tracking=False)
    recipe = params.recipe_for("uniform_40")
    lr0, gamma = recipe.classifier_optimizer.lr, recipe.lr_gamma
    steps_per_epoch = len(seen) // recipe.epochs
    assert recipe.lr_milestones == [1] and steps_per_epoch * recipe.epochs == len(seen)
    assert [lr for lr, _ in seen] == pytest.approx([lr0] * steps_per_epoch + [lr0 * gamma] * (len(seen) - steps_per_epoch))
    assert all(lr == pytest.approx(opt_lr) for lr, opt_lr in seen)

def test_run_writes_declared_outputs(env, full_run):
    params, _ = env
    out, metrics = full_run
    for name in paths.RUN_OUTPUTS:
        assert (out / name).is_file(), name
    assert not (out / paths.CHECKPOINT_FILE).exists(), "checkpoint is removed once the outputs exist"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(metrics))
    assert set(m) == CONTRACT_METRICS
    assert m["raw_verified"] is False  # the fake data is unverified; the report marks such cells
    recipe = params.recipe_for("uniform_40")
    assert m["recipe"] == recipe.model_dump(mode="json")
    assert (m["dataset"], m["corruption"], m["arch"], m["seed"], m["profile"]) == (
        "cifar10", "uniform_40", "1-10-1", 1, "tiny")
    assert m["epochs"] == recipe.epochs == 3 and m["device"].startswith("cpu (") and m["mlflow_run_id"] is None
    assert len(m["split_md5"]) == 32 and m["wall_time_s"] > 0 and m["images_per_s"] > 0
    # which code trained it: this repository's commit and torch, one process from epoch 0
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                            text=True).stdout.strip()
    assert m["git_commit"] == commit and m["torch_version"] == torch.__version__
    assert m["precision"] == ("bf16" if bf16_native(torch.device("cpu")) else "fp32")  # precision auto
    assert m["segments"] == [{"after_epoch": 0, "git_commit": commit, "git_dirty": m["git_dirty"],
                              "torch_version": torch.__version__, "device": m["device"], "precision": m["precision"],
                              "memory_format": m["memory_format"], "threads": m["threads"]}]

    assert (out / "history.csv").read_text().splitlines()[0] == HISTORY_HEADER
    hist = read_csv(out / "history.csv")
    assert [int(r["epoch"]) for r in hist] == [1, 2, 3]
    lr0 = recipe.classifier_optimizer.lr
    assert [float(r["lr"]) for r in hist] == pytest.approx([lr0, lr0 * recipe.lr_gamma, lr0 * recipe.lr_gamma])
    for r in hist:
        vals = {k: float(v) for k, v in r.items()}
        assert all(math.isfinite(v) for v in vals.values())
        assert 0 <= vals["test_acc"] <= 100 and vals["test_loss"] > 0 and vals["train_loss"] > 0
        assert 0 <= vals["train_acc"] <= 100
        assert vals["meta_loss"] > 0 and 0 < vals["mean_weight"] < 1
        assert vals["epoch_time_s"] > 0 and vals["images_per_s"] > 0
    accs = [float(r["test_acc"]) for r in hist]
    assert m["best_acc"] == max(accs) and m["final_acc"] == accs[-1]
    assert accs[m["best_epoch"] - 1] == m["best_acc"]
    # test accuracy is counted on the 100-image test subset: a multiple of 1%
    assert all(abs(a - round(a)) < 1e-9 for a in accs)

    curve = read_csv(out / "weight_curve.csv")
    wc = params.report.weight_curve
    assert list(curve[0]) == ["loss", "weight"] and len(curve) == wc.points
    losses = [float(r["loss"]) for r in curve]
    assert losses[0] == 0 and losses[-1] == pytest.approx(wc.max_loss)
    assert all(0 < float(r["weight"]) < 1 for r in curve)  # a sigmoid output

    mp = model_state(out)
    assert set(mp) == {"model", "vnet", "arch", "num_classes", "recipe"}
    assert mp["arch"] == "1-10-1" and mp["num_classes"] == 10 and mp["recipe"] == m["recipe"]
    from mwnet.nets import WeightingNet, build_backbone

    build_backbone(recipe.backbone, 10).load_state_dict(mp["model"])
    WeightingNet("1-10-1").load_state_dict(mp["vnet"])


def test_resume_after_kill_is_bit_identical(env, full_run):
    from mwnet.train import StopRequested, train_run

    params, root = env
    out = root / "runs" / "killed"
    with pytest.raises(StopRequested):
        train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False,
                  stop_after_epoch=1)
    assert (out / paths.CHECKPOINT_FILE).is_file()
    assert not any((out / n).exists() for n in paths.RUN_OUTPUTS), "no declared output before the end"
    ckpt = torch.load(out / paths.CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1

    train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False)
    assert_same_training(full_run[0], out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["best_acc"] == full_run[1]["best_acc"]
    assert [s["after_epoch"] for s in m["segments"]] == [0, 1]  # two processes trained it, both recorded


def test_a_checkpoint_from_before_segments_were_recorded_resumes_with_an_unknown_first_segment(env):
    from mwnet.train import StopRequested, train_run

    params, root = env
    out = root / "runs" / "older"
    with pytest.raises(StopRequested):
        train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False,
                  stop_after_epoch=2)
    ckpt = torch.load(out / paths.CHECKPOINT_FILE, weights_only=True)
    del ckpt["segments"]
    torch.save(ckpt, out / paths.CHECKPOINT_FILE)
    m = train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False)
    first, second = m["segments"]
    assert (first["after_epoch"], first["git_commit"], first["torch_version"]) == (0, "unknown", "unknown")
    assert first["precision"] == m["precision"]  # the checkpoint recorded its compute settings
    assert second["after_epoch"] == 2 and second["git_commit"] == m["git_commit"] != "unknown"


def test_refuses_checkpoint_of_another_run(env):
    from mwnet.checkpoint import CheckpointMismatch
    from mwnet.train import StopRequested, train_run

    params, root = env
    out = root / "runs" / "mismatch"
    with pytest.raises(StopRequested):
        train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False,
                  stop_after_epoch=1)
    with pytest.raises(CheckpointMismatch, match=r"arch: checkpoint '1-10-1', now '1-20-1'.*--restart"):
        train_run(params, "cifar10", "uniform_40", "1-20-1", 1, out, device="cpu", tracking=False)

    recipes = dict(params.recipes)
    recipes["uniform"] = recipes["uniform"].model_copy(update={"lr_gamma": 0.5})
    changed = params.model_copy(update={"recipes": recipes})
    with pytest.raises(CheckpointMismatch, match=r"recipe \(lr_gamma\)"):
        train_run(changed, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False)

    # --restart discards it: the new run starts at epoch 1 with the new recipe
    with pytest.raises(StopRequested):
        train_run(changed, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False,
                  restart=True, stop_after_epoch=1)
    ckpt = torch.load(out / paths.CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["fingerprint"]["recipe"]["lr_gamma"] == 0.5


def test_unreadable_checkpoint_is_a_user_error(env):
    from mwnet.cli import UserError
    from mwnet.train import train_run

    params, root = env
    out = root / "runs" / "garbage"
    out.mkdir(parents=True)
    (out / paths.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="--restart"):
        train_run(params, "cifar10", "uniform_40", "1-10-1", 1, out, device="cpu", tracking=False)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--dataset", "cifar11", "allowed values: cifar10, cifar100"),
        ("--corruption", "uniform_99", "allowed values (params corruptions.yaml): flip_40, imbalance_100, uniform_40"),
        ("--arch", "1-x-1", "malformed"),
        ("--arch", "2-10-1", "malformed"),
    ],
)
def test_cli_rejects_bad_run_arguments(capsys, tmp_path, flag, value, expected):
    args = {"--dataset": "cifar10", "--corruption": "uniform_40", "--arch": "1-100-1", "--seed": "1"}
    args[flag] = value
    argv = ["train", *[x for kv in args.items() for x in kv], "--params", str(REPO / "params"),
            "--out", str(tmp_path / "out"), "--no-tracking"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwnet: error:") and expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
@pytest.mark.parametrize("extra, expected", [
    (["--device", "cuda"], "--device cuda: no CUDA device"),
    (["--threads", "0"], "--threads 0: must be >= 1"),
])
def test_cli_rejects_unusable_device_or_threads(capsys, tmp_path, extra, expected):
    argv = ["train", "--dataset", "cifar10", "--corruption", "uniform_40", "--arch", "1-100-1", "--seed", "1",
            "--params", str(REPO / "params"), "--out", str(tmp_path / "out"), "--no-tracking", *extra]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_index_stream_reshuffles_when_exhausted():
    from mwnet.train import IndexStream

    s = IndexStream(7, torch.Generator().manual_seed(0))
    first = s.take(5)
    state = s.state_dict()
    rest = torch.cat([s.take(5) for _ in range(4)])  # crosses three permutation boundaries
    seq = torch.cat([first, rest])
    for i in range(0, 21, 7):
        assert sorted(seq[i : i + 7].tolist()) == list(range(7))
    assert not torch.equal(seq[:7], seq[7:14])  # reshuffled, not repeated
    s2 = IndexStream(7, torch.Generator())
    s2.load_state_dict(state)
    assert torch.equal(torch.cat([s2.take(5) for _ in range(4)]), rest)


def test_seeded_subset_is_fixed_and_seed_dependent():
    from mwnet.train import make_generator, seeded_subset

    a = seeded_subset(1000, 50, make_generator(1, "train_subset"))
    assert torch.equal(a, seeded_subset(1000, 50, make_generator(1, "train_subset")))
    assert not torch.equal(a, seeded_subset(1000, 50, make_generator(2, "train_subset")))
    assert len(set(a.tolist())) == 50 and torch.equal(a, a.sort().values)
    assert seeded_subset(1000, None, make_generator(1, "x")) is None
    assert seeded_subset(10, 50, make_generator(1, "x")) is None


@pytest.mark.slow
def test_cli_quick_profile_end_to_end(tmp_path):
    """`mwnet train --profile quick` as CI runs it: a fresh process, fake data, MLflow in tmp."""
    params = make_env(tmp_path, profile="quick", corruptions=("imbalance_100",), train_per_class=500,
                      test_per_class=50)
    out = tmp_path / "run"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "mwnet.cli", "train", "--dataset", "cifar10", "--corruption", "imbalance_100",
         "--arch", "1-100-1", "--seed", "1", "--profile", "quick", "--params", str(params), "--out", str(out),
         "--device", "cpu", "--threads", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    wall = time.perf_counter() - t0
    print(f"quick-profile run incl. process start: {wall:.1f} s")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["profile"] == "quick" and m["epochs"] == 2 and m["recipe"]["train_subset"] == 500
    assert m["mlflow_run_id"]
    assert r.stderr.count("epoch ") >= 2 and "test loss" in r.stderr
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_rerun_matches_uninterrupted(env, full_run):
    """A real kill (SIGKILL, no cleanup) of `mwnet train` after its first checkpoint; the same command
    run again resumes and ends with the uninterrupted run's parameters and history."""
    import signal

    params, root = env
    out = root / "runs" / "sigkill"
    cmd = [sys.executable, "-m", "mwnet.cli", "train", "--dataset", "cifar10", "--corruption", "uniform_40",
           "--arch", "1-10-1", "--seed", "1", "--params", params.params_dir, "--out", str(out),
           "--device", "cpu", "--no-tracking"]
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env_vars, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / paths.CHECKPOINT_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-run (rc {proc.returncode}): {err}"
    assert not (out / "metrics.json").exists()

    r = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert_same_training(full_run[0], out)


# ---------------------------------------------------------------------------------- CE baseline


def test_ce_baseline_trains_like_mwnet_without_a_weighting_net(env, full_run):
    """`--arch ce`: same data, init, schedule and streams as the MW-Net run of the seed; every sample
    weighted 1, no weighting net, no meta loss; the same declared outputs."""
    from mwnet.train import train_run

    params, root = env
    out = root / "runs" / "ce"
    m = train_run(params, "cifar10", "uniform_40", "ce", 1, out, device="cpu", tracking=False, progress=False)
    assert set(m) == CONTRACT_METRICS and m["arch"] == "ce"
    for name in paths.RUN_OUTPUTS:
        assert (out / name).is_file()
    hist = read_csv(out / "history.csv")
    assert [r["epoch"] for r in hist] == ["1", "2", "3"]
    assert all(r["meta_loss"] == "" and float(r["mean_weight"]) == 1.0 for r in hist)
    assert all(float(r["mean_weight_clean"]) == 1.0 == float(r["mean_weight_noisy"]) for r in hist)
    assert [float(r["lr"]) for r in hist] == [float(r["lr"]) for r in read_csv(full_run[0] / "history.csv")]
    assert {float(r["weight"]) for r in read_csv(out / "weight_curve.csv")} == {1.0}
    state = model_state(out)
    assert state["vnet"] is None and state["arch"] == "ce"
    # same initialisation as the MW-Net run of the seed: a baseline differs only by the step
    from mwnet.train import build_state

    recipe = params.recipe_for("uniform_40")
    ce, mw = (build_state(recipe, a, 10, 100, 1, torch.device("cpu"), None, False) for a in ("ce", "1-10-1"))
    assert ce.vnet is None and mw.vnet is not None
    init = ce.model.state_dict()
    assert all(torch.equal(v, mw.model.state_dict()[k]) for k, v in init.items())
    assert any(not torch.equal(v, state["model"][k]) for k, v in init.items())  # it trained
    # the training loss is the plain mean CE: it falls on the (noisy) labels over 3 epochs
    assert float(hist[-1]["train_loss"]) < float(hist[0]["train_loss"])


def test_ce_baseline_resumes_bit_for_bit(env):
    from mwnet.train import StopRequested, train_run

    params, root = env
    a, b = root / "runs" / "ce_a", root / "runs" / "ce_b"
    train_run(params, "cifar10", "uniform_40", "ce", 1, a, device="cpu", tracking=False, progress=False)
    with pytest.raises(StopRequested):
        train_run(params, "cifar10", "uniform_40", "ce", 1, b, device="cpu", tracking=False, progress=False,
                  stop_after_epoch=1)
    train_run(params, "cifar10", "uniform_40", "ce", 1, b, device="cpu", tracking=False, progress=False)
    ma, mb = model_state(a), model_state(b)
    assert all(torch.equal(ma["model"][k], mb["model"][k]) for k in ma["model"])


def test_group_weights_are_the_mean_weight_of_clean_and_corrupted_labels(full_run, env):
    """history's mean_weight_clean / _noisy: the MW-Net step's per-sample weights averaged over the
    samples whose label is clean / corrupted; together they give mean_weight (count-weighted)."""
    params, root = env
    hist = read_csv(full_run[0] / "history.csv")
    summary = json.loads((paths.split_dir(params.data.corrupted_root, "cifar10", "uniform_40", 1)
                          / paths.SUMMARY_FILE).read_text())
    assert summary["wrong_label_share"] > 0
    for r in hist:
        clean, noisy, mean = float(r["mean_weight_clean"]), float(r["mean_weight_noisy"]), float(r["mean_weight"])
        assert 0 < clean < 1 and 0 < noisy < 1
        assert min(clean, noisy) - 1e-6 <= mean <= max(clean, noisy) + 1e-6


def test_group_weights_match_a_direct_computation(env):
    """One epoch by hand: the loop's clean / noisy means equal the per-sample weights the step
    returned, grouped by the split's true labels."""
    from mwnet import train as T

    params, root = env
    recipe = params.recipe_for("uniform_40")
    data = T.load_run_data(params, recipe, "cifar10", "uniform_40", 1, torch.device("cpu"))
    state = T.build_state(recipe, "1-10-1", data.num_classes, len(data.meta_y), 1, torch.device("cpu"), None, False)
    seen_w, seen_noisy = [], []
    real_step = state.step

    def spy(x, y, xm, ym, lr):
        out = real_step(x, y, xm, ym, lr)
        seen_w.append(out["weights"].clone())
        return out

    order_state = state.g_order.get_state()
    row = T._train_epoch(1, recipe, spy, state.model, state.vnet, state.scheduler, data.train_x, data.train_y,
                         data.train_noisy, data.meta_x, data.meta_y, state.g_order, state.g_aug, state.meta_stream,
                         data.augmentation, False, False)
    g = torch.Generator()
    g.set_state(order_state)
    order = torch.randperm(len(data.train_y), generator=g)
    w = torch.cat(seen_w).double()
    noisy = data.train_noisy[order]
    assert math.isclose(row["mean_weight_noisy"], w[noisy].mean().item(), rel_tol=1e-9)
    assert math.isclose(row["mean_weight_clean"], w[~noisy].mean().item(), rel_tol=1e-9)
    assert 0 < noisy.sum() < len(noisy)


def test_plan_estimate_is_within_a_factor_of_two_of_the_measured_time(env, tmp_path, monkeypatch):
    """mwnet plan measures step times here and estimates a run; a real tiny run takes about that.
    Both single-threaded; the run is timed like metrics.json's wall_time_s (training + evaluation)."""
    from mwnet.plan import run_estimate
    from mwnet.train import train_run

    params, root = env
    monkeypatch.setenv("MWNET_CACHE_DIR", str(tmp_path / "cache"))
    est = run_estimate(params, "cifar10", "uniform_40", "1-10-1", "cpu", threads=1)
    m = train_run(params, "cifar10", "uniform_40", "1-10-1", 1, root / "runs" / "estimate", device="cpu",
                  tracking=False, progress=False)
    assert m["estimated_wall_time_s"] == pytest.approx(est)  # the run records the (cached) estimate
    ratio = m["wall_time_s"] / est
    print(f"estimate {est:.2f} s, measured {m['wall_time_s']:.2f} s, ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, f"measured {m['wall_time_s']:.2f} s vs estimate {est:.2f} s"


def test_an_older_checkpoint_without_an_augmentation_entry_still_resumes():
    """Checkpoints written before the augmentation was a parameter have no entry for it: they resume;
    one that has the entry must match it."""
    from mwnet.checkpoint import CheckpointMismatch, check_fingerprint

    now = {"arch": "1-100-1", "augmentation": {"crop_padding": 4}}
    check_fingerprint("ckpt", {"arch": "1-100-1"}, now, optional=("augmentation",))
    with pytest.raises(CheckpointMismatch, match=r"augmentation \(crop_padding\)"):
        check_fingerprint("ckpt", {"arch": "1-100-1", "augmentation": {"crop_padding": 2}}, now,
                          optional=("augmentation",))
    with pytest.raises(CheckpointMismatch, match="augmentation"):
        check_fingerprint("ckpt", {"arch": "1-100-1"}, now)
