"""The MW-Net training loop: one (dataset, corruption, weighting-net shape, seed) run.

Everything about the run comes from params (params.recipe_for(corruption)); the MW-Net iteration
itself is mwnet.meta_step.MetaWeightStep. This module handles data on the device, the epoch loop,
evaluation, the resumable checkpoint, progress output, MLflow, and the declared outputs.

Randomness: every random choice comes from its own torch.Generator seeded from the run seed and the
stream's name (subsets, data order, augmentation, meta stream); torch.manual_seed(seed) seeds the
initialisation. On CPU a run is a pure function of (params, data, seed), and a run killed and
resumed from its checkpoint ends bit-for-bit where an uninterrupted run ends.

Outputs (docs/outputs.md): metrics.json, history.csv, weight_curve.csv, model.pt, written atomically
after the last epoch. checkpoint.pt is written atomically after every epoch and deleted once the
outputs exist (a finished run is complete without it). Stale outputs are removed when a run starts,
so a killed run never leaves files that look finished.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mwnet import paths
from mwnet.checkpoint import check_fingerprint, load_checkpoint, save_checkpoint
from mwnet.cli import UserError
from mwnet.compute import Compute, bf16_native, resolve_compute
from mwnet.config import BASELINES, DATASET_CLASSES, Params, parse_shape
from mwnet.io import atomic_path, write_json_atomic, write_text_atomic
from mwnet.tracking import (
    Tracker,
    source_tags,
    experiment_name,
    flatten,
    git_state,
    plot_weight_curve,
    resolve_tracking_uri,
)

# meta_loss is empty for a baseline; mean_weight_clean / _noisy (mean unnormalised weight of samples whose
# label is clean / corrupted) are empty when a group has no sample (e.g. no corrupted label under imbalance).
HISTORY_COLUMNS = [
    "epoch", "lr", "train_loss", "train_acc", "meta_loss", "mean_weight", "mean_weight_clean",
    "mean_weight_noisy", "test_loss", "test_acc", "epoch_time_s", "images_per_s",
]
CHECKPOINT_FORMAT = 1
UNKNOWN_SEGMENT = {"git_commit": "unknown", "git_dirty": "unknown", "torch_version": "unknown", "device": "unknown",
                   "precision": "unknown", "memory_format": "unknown", "threads": None}


class StopRequested(KeyboardInterrupt):
    """Raised after a checkpoint when `stop_after_epoch` is reached: behaves like Ctrl-C (tests)."""


# ------------------------------------------------------------------------------------------------
# small helpers


def derive_seed(seed: int, stream: str) -> int:
    """Independent, reproducible seed for one named random stream of a run."""
    digest = hashlib.sha256(f"mwnet/{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # fits torch's int64 seed


def make_generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, stream))
    return g


def resolve_device(device: str, runs_per_gpu: int = 1) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: allowed values: auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device auto or cpu)")
    if device == "cuda" and torch.cuda.device_count() > 1:
        # Several visible GPUs: take a share of one that holds fewer than runs_per_gpu mwnet runs
        # (mwnet/gpu_slots.py). One visible GPU (a scheduler's allocation): --resources gpu=N decides.
        from mwnet import gpu_slots

        index = gpu_slots.acquire(torch.cuda.device_count(), runs_per_gpu=runs_per_gpu)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(device)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    from mwnet.compute import cpu_name

    return f"cpu ({cpu_name()}, {torch.backends.cpu.get_cpu_capability()})"


def run_compute(precision: str, memory_format: str, device: torch.device, ckpt: dict | None) -> Compute:
    """The run's precision and memory format: a resumed run keeps its checkpoint's (even on a machine
    that would pick others: one run, one precision); a new run resolves the settings for `device`."""
    try:
        chosen = resolve_compute(precision, memory_format, device)
    except ValueError as e:
        raise UserError(f"params recipes.yaml / run.yaml: {e}") from None
    if precision == "bf16" and not bf16_native(device):
        _log(f"note: precision bf16 forced on a {device.type} without native bf16 (AVX512-BF16 or AMX): "
             "emulated, slower than fp32")
    saved = (ckpt or {}).get("compute")
    if saved is None:  # a new run, or a checkpoint from before the setting was recorded
        if ckpt is None:
            return chosen
        cuda = device.type == "cuda"  # what such a checkpoint's run computed with
        return Compute("bf16" if cuda and precision != "fp32" else "fp32", "channels_last" if cuda else "contiguous")
    kept = Compute(**saved)
    if kept != chosen:
        _log(f"note: this machine would compute in {chosen.precision}, {chosen.memory_format}; the run "
             f"continues in {kept.precision}, {kept.memory_format} as it started")
    return kept


def validate_run_args(params: Params, dataset: str, corruption: str, arch: str, seed: int) -> None:
    datasets = sorted(set(params.data.sources) & set(DATASET_CLASSES))
    if dataset not in datasets:
        raise UserError(f"--dataset {dataset!r}: allowed values: {', '.join(datasets)}")
    if corruption not in params.corruptions:
        raise UserError(
            f"--corruption {corruption!r}: allowed values (params corruptions.yaml): "
            f"{', '.join(sorted(params.corruptions))}"
        )
    if arch in BASELINES:
        return _check_seed(seed)
    try:
        parse_shape(arch)
    except ValueError as e:
        raise UserError(f"--arch: {e}; or a baseline: {', '.join(BASELINES)}; the grid's shapes: "
                        f"{', '.join(params.grid.archs)}") from None
    _check_seed(seed)


def _check_seed(seed) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed {seed!r}: must be a non-negative integer")


def seeded_subset(n: int, k: int | None, generator: torch.Generator) -> torch.Tensor | None:
    """Sorted indices of a fixed random subset of size k (None: keep everything)."""
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=generator)[:k].sort().values


class IndexStream:
    """Endless stream over 0..n-1: a new seeded permutation whenever the current one is used up."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n = n
        self.generator = generator
        self.perm = torch.empty(0, dtype=torch.int64)
        self.pos = 0

    def take(self, k: int) -> torch.Tensor:
        parts = []
        while k > 0:
            if self.pos >= len(self.perm):
                self.perm = torch.randperm(self.n, generator=self.generator)
                self.pos = 0
            part = self.perm[self.pos : self.pos + k]
            self.pos += len(part)
            k -= len(part)
            parts.append(part)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"]
        self.pos = state["pos"]


def build_optimizer(spec, params):
    """The optimiser a recipe's SGDSpec / AdamSpec describes (classifier and weighting net)."""
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
        )
    return torch.optim.Adam(params, lr=spec.lr, betas=tuple(spec.betas), weight_decay=spec.weight_decay)


@torch.no_grad()
def evaluate(model, x_u8, y, batch_size: int, autocast_dtype, channels_last: bool, augmentation) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in percent) on normalised, un-augmented images; one host sync."""
    from mwnet.augment import normalize

    model.eval()
    loss_sum = torch.zeros((), device=y.device)
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    amp = torch.autocast(y.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for i in range(0, len(y), batch_size):
        xb = x_u8[i : i + batch_size]
        if channels_last:  # convert the uint8 batch (4x smaller than its float copy); normalize keeps the layout
            xb = xb.contiguous(memory_format=torch.channels_last)
        xb = normalize(xb, augmentation)
        yb = y[i : i + batch_size]
        with amp:
            logits = model(xb)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    loss, acc = torch.stack([loss_sum, correct.double()]).tolist()
    return loss / len(y), 100.0 * acc / len(y)


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _log(msg: str, bar=None) -> None:
    if bar is not None and not bar.disable:
        bar.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# the run, in parts: data -> state (model, optimisers, step, generators) -> epochs -> outputs




@dataclass
class RunData:
    """The run's data on the device (uint8 images, int64 labels), after the recipe's subsets."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_noisy: torch.Tensor  # bool: the label trained with differs from the true one
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    split_md5: str
    raw_verified: bool
    test_digest: str  # of the raw data the test set comes from (content md5)
    augmentation: Any  # params.data.augmentation: normalisation and crop padding


def load_run_data(params: Params, recipe, dataset: str, corruption: str, seed: int, dev) -> RunData:
    from mwnet.data.loading import load_split

    d = load_split(dataset, corruption, seed, raw_root=params.data.raw_root,
                   corrupted_root=params.data.corrupted_root, device=dev)
    train = (d.train_x, d.train_y, d.train_y != d.train_true)
    sub = seeded_subset(len(d.train_y), recipe.train_subset, make_generator(seed, "train_subset"))
    if sub is not None:
        train = tuple(t[sub.to(dev)] for t in train)
    test = (d.test_x, d.test_y)
    sub = seeded_subset(len(d.test_y), recipe.test_subset, make_generator(seed, "test_subset"))
    if sub is not None:
        test = tuple(t[sub.to(dev)] for t in test)
    return RunData(*train, d.meta_x, d.meta_y, *test, d.num_classes, d.split_md5, d.raw_verified, d.raw_md5,
                   params.data.augmentation)


@dataclass
class RunState:
    """Everything that changes during training: what the checkpoint saves and restores."""

    model: torch.nn.Module
    vnet: torch.nn.Module | None  # None for a baseline
    model_opt: torch.optim.Optimizer
    vnet_opt: torch.optim.Optimizer | None
    scheduler: Any
    step: Any  # MetaWeightStep or PlainStep: step(x, y, x_meta, y_meta, lr) -> dict
    g_order: torch.Generator
    g_aug: torch.Generator
    meta_stream: IndexStream
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"acc": -1.0, "epoch": 0})
    mlflow_run_id: str | None = None
    compute: Compute | None = None  # what the run computes with; kept by a resumed run
    # one entry per process that trained the run (commit, torch, device, ...); a checkpoint written
    # before segments were recorded gives one entry "unknown" for the epochs before it
    segments: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self, fingerprint: dict) -> dict[str, Any]:
        return {
            "fingerprint": fingerprint, "epoch": self.epoch, "history": self.history, "best": self.best,
            "mlflow_run_id": self.mlflow_run_id, "compute": self.compute.as_dict() if self.compute else None,
            "segments": self.segments,
            "model": self.model.state_dict(), "model_opt": self.model_opt.state_dict(),
            "vnet": self.vnet.state_dict() if self.vnet is not None else None,
            "vnet_opt": self.vnet_opt.state_dict() if self.vnet_opt is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "rng": {"order": self.g_order.get_state(), "augment": self.g_aug.get_state(),
                    "meta": self.meta_stream.state_dict(), "torch": torch.get_rng_state()},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.model_opt.load_state_dict(ckpt["model_opt"])
        if self.vnet is not None:
            self.vnet.load_state_dict(ckpt["vnet"])
            self.vnet_opt.load_state_dict(ckpt["vnet_opt"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.g_order.set_state(ckpt["rng"]["order"])
        self.g_aug.set_state(ckpt["rng"]["augment"])
        self.meta_stream.load_state_dict(ckpt["rng"]["meta"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.epoch, self.history, self.best = ckpt["epoch"], ckpt["history"], ckpt["best"]
        self.mlflow_run_id = ckpt["mlflow_run_id"]
        older = UNKNOWN_SEGMENT | (ckpt.get("compute") or {}) | {"after_epoch": 0}  # before segments were kept
        self.segments = list(ckpt.get("segments") or [older])


def build_state(recipe, arch: str, num_classes: int, n_meta: int, seed: int, dev, amp_dtype,
                channels_last: bool) -> RunState:
    """Model, weighting net (not for a baseline), optimisers, schedule, the step and the generators."""
    from mwnet.meta_step import MetaWeightStep
    from mwnet.nets import WeightingNet, build_backbone
    from mwnet.plain_step import PlainStep

    torch.manual_seed(seed)  # the backbone is built first: a baseline and MW-Net start from one init
    model = build_backbone(recipe.backbone, num_classes).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model_opt = build_optimizer(recipe.classifier_optimizer, model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(model_opt, milestones=recipe.lr_milestones, gamma=recipe.lr_gamma)
    if arch in BASELINES:
        vnet = vnet_opt = None
        step = PlainStep(model, model_opt, autocast_dtype=amp_dtype)
    else:
        vnet = WeightingNet(arch).to(dev)
        vnet_opt = build_optimizer(recipe.weighting_optimizer, vnet.parameters())
        step = MetaWeightStep(
            model, vnet, model_opt, vnet_opt,
            meta_gradient=recipe.meta_gradient, weight_normalization=recipe.weight_normalization,
            autocast_dtype=amp_dtype,
        )
    return RunState(
        model, vnet, model_opt, vnet_opt, scheduler, step,
        g_order=make_generator(seed, "order"), g_aug=make_generator(seed, "augment", dev),
        meta_stream=IndexStream(n_meta, make_generator(seed, "meta")),
    )


def start_tracking(params: Params, recipe, tracking: bool, dataset, corruption, arch, seed, data: RunData,
                   dev, run_id: str | None, compute: Compute):
    tracker = Tracker(
        resolve_tracking_uri(params.tracking.tracking_uri),
        experiment_name(params.tracking.experiment, params.profile),
        enabled=tracking,
    )
    commit, dirty = git_state(Path(__file__).resolve().parent)
    run_info = {"dataset": dataset, "corruption": corruption, "arch": arch, "seed": str(seed),
                "profile": params.profile, "method": "baseline" if arch in BASELINES else "mwnet"}
    corruption_spec = params.corruptions[corruption].model_dump(mode="json")
    tracker.start(
        run_id,
        run_name=f"{dataset}/{corruption}/{arch}/seed{seed}",
        params={
            **run_info, "recipe_name": params.corruptions[corruption].recipe,
            **flatten(params.run_recipe(corruption, arch)), **flatten(corruption_spec, "corruption_spec."),
        },
        tags={
            **run_info, "git_commit": commit, "git_dirty": dirty, **source_tags("mwnet train", commit),
            "split_md5": data.split_md5, "raw_verified": str(data.raw_verified).lower(),
            "device": describe_device(dev), **{f"compute.{k}": v for k, v in compute.as_dict().items()},
            "threads": str(torch.get_num_threads()),
        },
    )
    if run_id is None:  # a new run (a resumed one has them already)
        split = paths.split_dir(params.data.corrupted_root, dataset, corruption, seed)
        raw = paths.raw_dir(params.data.raw_root, dataset)
        verified = {"raw_verified": data.raw_verified, "raw_folder": str(raw)}
        tracker.log_datasets([
            (f"{dataset}/{corruption}/seed{seed}", data.split_md5, split,
             {"train_images": len(data.train_y), "meta_images": len(data.meta_y),
              "corrupted_labels": int(data.train_noisy.sum()), **verified}, "training"),
            (f"{dataset}/test", data.test_digest, raw, {"test_images": len(data.test_y), **verified}, "eval"),
        ])
    if dev.type == "cuda":
        tracker.start_system_metrics()
    return tracker


def train_run(
    params: Params,
    dataset: str,
    corruption: str,
    arch: str,
    seed: int,
    out_dir: str | Path,
    *,
    device: str = "auto",
    restart: bool = False,
    tracking: bool = True,
    progress: bool | None = None,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train one run (resuming from out_dir/checkpoint.pt when present); returns metrics.json's dict.

    arch: a weighting-net shape (MW-Net) or a baseline name ("ce"). restart: discard an existing
    checkpoint instead of resuming. tracking: log to MLflow. progress: tqdm bar per epoch (default:
    when stderr is a terminal); the per-epoch line is always printed. stop_after_epoch: raise
    StopRequested right after that epoch's checkpoint (tests).
    """
    validate_run_args(params, dataset, corruption, arch, seed)
    dev = resolve_device(device, params.run.runs_per_gpu)
    recipe = params.recipe_for(corruption)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / paths.CHECKPOINT_FILE
    if progress is None:
        progress = sys.stderr.isatty()

    data = load_run_data(params, recipe, dataset, corruption, seed, dev)

    # what this run is: a checkpoint from anything else is refused
    recipe_dict = params.run_recipe(corruption, arch)
    fingerprint = {
        "format": CHECKPOINT_FORMAT,
        "dataset": dataset, "corruption": corruption, "arch": arch, "seed": seed,
        "recipe": recipe_dict, "split_md5": data.split_md5, "device_type": dev.type,
        "augmentation": params.data.augmentation.model_dump(mode="json"),
    }
    if restart:
        ckpt_path.unlink(missing_ok=True)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        # checkpoints written before the augmentation was a parameter have no entry for it
        check_fingerprint(ckpt_path, ckpt["fingerprint"], fingerprint, optional=("augmentation",))
    else:
        for name in paths.RUN_OUTPUTS:  # outputs of an earlier run must not pass for this one's
            (out_dir / name).unlink(missing_ok=True)

    compute = run_compute(recipe.precision, params.run.memory_format, dev, ckpt)
    channels_last, amp_dtype = compute.channels_last, compute.autocast_dtype
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    state = build_state(recipe, arch, data.num_classes, len(data.meta_y), seed, dev, amp_dtype, channels_last)
    state.compute = compute
    if ckpt is not None:
        state.load_state_dict(ckpt)
        _log(f"resuming {ckpt_path} after epoch {state.epoch}/{recipe.epochs}")
    commit, dirty = git_state(Path(__file__).resolve().parent)
    state.segments.append({"after_epoch": state.epoch, "git_commit": commit, "git_dirty": dirty,
                           "torch_version": str(torch.__version__), "device": describe_device(dev),
                           "precision": compute.precision, "memory_format": compute.memory_format,
                           "threads": torch.get_num_threads()})
    _log(f"mwnet train at commit {commit[:12]}{' (uncommitted changes)' if dirty == 'true' else ''}: computing in "
         f"{compute.precision}, {compute.memory_format}, {torch.get_num_threads()} thread(s) on {describe_device(dev)}")
    tracker = start_tracking(params, recipe, tracking, dataset, corruption, arch, seed, data, dev,
                             state.mlflow_run_id, compute)
    state.mlflow_run_id = tracker.run_id

    try:
        for epoch in range(state.epoch + 1, recipe.epochs + 1):
            run_epoch(epoch, recipe, state, data, amp_dtype, channels_last, progress)
            tracker.log_epoch(epoch, {k: v for k, v in state.history[-1].items()
                                      if k in HISTORY_COLUMNS and k != "epoch" and v is not None}
                              | {"best_acc": state.best["acc"]})
            save_checkpoint(ckpt_path, state.state_dict(fingerprint))
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < recipe.epochs:
                raise StopRequested(f"stopped after epoch {epoch} (stop_after_epoch)")
        metrics = finish_run(params, recipe, state, data, out_dir, tracker, dev,
                             dataset=dataset, corruption=corruption, arch=arch, seed=seed)
        tracker.end("FINISHED")
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    ckpt_path.unlink(missing_ok=True)
    return metrics


def run_epoch(epoch: int, recipe, state: RunState, data: RunData, amp_dtype, channels_last: bool,
              progress: bool) -> None:
    """Train one epoch, evaluate on the test set, print the epoch line, append to the history."""
    row = _train_epoch(
        epoch, recipe, state.step, state.model, state.vnet, state.scheduler,
        data.train_x, data.train_y, data.train_noisy, data.meta_x, data.meta_y,
        state.g_order, state.g_aug, state.meta_stream, data.augmentation, channels_last, progress,
        last_test_acc=state.history[-1]["test_acc"] if state.history else None,
    )
    row["test_loss"], row["test_acc"] = evaluate(
        state.model, data.test_x, data.test_y, recipe.eval_batch_size, amp_dtype, channels_last,
        data.augmentation,
    )
    row["epoch_time_s"] = time.perf_counter() - row.pop("_t0")
    state.history.append(row)
    state.epoch = epoch
    if row["test_acc"] > state.best["acc"]:
        state.best = {"acc": row["test_acc"], "epoch": epoch}
    meta = "" if row["meta_loss"] is None else f"meta loss {row['meta_loss']:.4f} mean w {row['mean_weight']:.4f} "
    if row["mean_weight_noisy"] is not None:
        meta += f"(clean {row['mean_weight_clean']:.4f} noisy {row['mean_weight_noisy']:.4f}) "
    _log(
        f"epoch {epoch}/{recipe.epochs} lr {row['lr']:.4g} | train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.2f}% {meta}| test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% "
        f"(best {state.best['acc']:.2f}% @{state.best['epoch']}) "
        f"| {row['images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f} s{_eta(state.history, recipe.epochs)}"
    )


def _eta(history: list[dict], epochs: int) -> str:
    """', about N min left' from the mean epoch time so far (empty after the last epoch)."""
    left = epochs - len(history)
    if left <= 0:
        return ""
    from mwnet.plan import human

    return f", about {human(left * sum(r['epoch_time_s'] for r in history) / len(history))} left"


def finish_run(params: Params, recipe, state: RunState, data: RunData, out_dir: Path, tracker, dev, *,
               dataset, corruption, arch, seed) -> dict[str, Any]:
    """The declared outputs (metrics.json last) and the MLflow artifacts; returns metrics.json's dict."""
    from mwnet.meta_step import weight_curve

    grid = torch.linspace(0.0, params.report.weight_curve.max_loss, params.report.weight_curve.points, device=dev)
    if state.vnet is not None:
        state.vnet.eval()
        with torch.no_grad():
            weights = weight_curve(state.vnet, grid).detach().float().reshape(-1).cpu().tolist()
    else:
        weights = [1.0] * len(grid)  # a baseline weights every sample equally
    losses = grid.cpu().tolist()
    history = state.history
    train_time = sum(r["_train_time_s"] for r in history)
    metrics = {
        "best_acc": state.best["acc"], "final_acc": history[-1]["test_acc"], "best_epoch": state.best["epoch"],
        "epochs": recipe.epochs,
        "wall_time_s": sum(r["epoch_time_s"] for r in history),  # training + evaluation, all segments
        "estimated_wall_time_s": _cached_estimate(params, dataset, corruption, arch, dev),  # mwnet plan's
        "images_per_s": len(data.train_y) * len(history) / train_time if train_time > 0 else 0.0,
        "device": describe_device(dev), "precision": state.compute.precision,
        # provenance: the code and torch of the process that finished the run, and of every process
        # that trained part of it (a resumed run has several)
        "git_commit": state.segments[-1]["git_commit"], "git_dirty": state.segments[-1]["git_dirty"],
        "torch_version": str(torch.__version__), "segments": state.segments,
        "memory_format": state.compute.memory_format, "threads": torch.get_num_threads(),  # the last segment's
        "dataset": dataset, "corruption": corruption, "arch": arch, "seed": seed, "profile": params.profile, "split_md5": data.split_md5, "raw_verified": data.raw_verified,
        "mlflow_run_id": state.mlflow_run_id, "recipe": params.run_recipe(corruption, arch),
        "augmentation": params.data.augmentation.model_dump(mode="json"),
    }
    _write_outputs(out_dir, metrics, history, losses, weights, state.model, state.vnet, arch, data.num_classes,
                   metrics["recipe"])
    tracker.log_epoch(recipe.epochs, {"final_acc": metrics["final_acc"], "best_acc": metrics["best_acc"]})
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = [out_dir / "history.csv", out_dir / "weight_curve.csv", out_dir / "metrics.json"]
        if state.vnet is not None:
            png = Path(tmp) / "weight_curve.png"
            plot_weight_curve(losses, weights, png, f"{dataset} {corruption} {arch} seed {seed}")
            artifacts.append(png)
        tracker.log_artifacts(artifacts)
    return metrics


def _cached_estimate(params, dataset, corruption, arch, dev) -> float | None:
    """What `mwnet plan` estimated for this run (from cached step times only; None when not measured)."""
    from mwnet.plan import run_estimate

    try:
        return run_estimate(params, dataset, corruption, arch, dev.type, torch.get_num_threads(), measure=False)
    except Exception:  # an estimate must never fail a finished run
        return None


def _train_epoch(
    epoch, recipe, step, model, vnet, scheduler,
    train_x, train_y, train_noisy, meta_x, meta_y, g_order, g_aug, meta_stream, augmentation,
    channels_last, progress, last_test_acc=None,
) -> dict[str, Any]:
    """One pass over the (shuffled) training part; returns the epoch's history row (partial)."""
    from tqdm import tqdm

    from mwnet.augment import augment

    t0 = time.perf_counter()
    lr = scheduler.get_last_lr()[0]
    n_train = len(train_y)
    bs, mbs = recipe.batch_size, recipe.meta_batch_size
    steps = math.ceil(n_train / bs)  # the last, smaller batch is kept (as a DataLoader would)
    dev = train_y.device
    model.train()
    if vnet is not None:
        vnet.train()
    order = torch.randperm(n_train, generator=g_order).to(dev, non_blocking=True)
    meta_order = meta_stream.take(steps * mbs).to(dev, non_blocking=True)
    sums: dict[str, torch.Tensor] = {}
    # weight sums and counts of samples whose label is clean / corrupted (device tensors: no sync)
    groups = torch.zeros(4, dtype=torch.float64, device=dev)  # w_clean, n_clean, w_noisy, n_noisy
    bar = tqdm(
        total=steps, desc=f"epoch {epoch}/{recipe.epochs}", unit="batch", leave=False,
        disable=not progress, file=sys.stderr, dynamic_ncols=True,
    )
    refresh_every = max(1, steps // 20)  # the bar's numbers cost a host sync: only a few per epoch
    for s in range(steps):
        idx = order[s * bs : (s + 1) * bs]
        midx = meta_order[s * mbs : (s + 1) * mbs]
        x = augment(train_x[idx], g_aug, augmentation, channels_last=channels_last)
        xm = augment(meta_x[midx], g_aug, augmentation, channels_last=channels_last)
        out = step(x, train_y[idx], xm, meta_y[midx], lr)
        w = out.pop("weights").double()
        noisy = train_noisy[idx].double()
        groups += torch.stack([(w * (1 - noisy)).sum(), (1 - noisy).sum(), (w * noisy).sum(), noisy.sum()])
        for k, v in out.items():
            v = v.detach().float()
            sums[k] = sums[k] + v if k in sums else v
        if not bar.disable:
            bar.update(1)
            if (s + 1) % refresh_every == 0 or s + 1 == steps:
                post = {"loss": f"{sums['loss'].item() / (s + 1):.4f}"}
                if "acc" in sums:  # batch accuracy, when the step reports it
                    post["acc"] = f"{sums['acc'].item() / (s + 1):.1f}%"
                elif last_test_acc is not None:
                    post["test_acc"] = f"{last_test_acc:.1f}%"
                post["img/s"] = f"{min(n_train, (s + 1) * bs) / (time.perf_counter() - t0):.0f}"
                bar.set_postfix(post, refresh=False)
    bar.close()
    keys = sorted(sums)
    values = torch.cat([torch.stack([sums[k] for k in keys]).double() / steps, groups]).tolist()  # one sync
    means = dict(zip(keys, values))
    w_clean, n_clean, w_noisy, n_noisy = values[len(keys):]
    train_time = time.perf_counter() - t0
    scheduler.step()
    return {
        "epoch": epoch, "lr": lr,
        "train_loss": means["loss"], "train_acc": means["acc"], "meta_loss": means.get("meta_loss"),
        "mean_weight": means.get("mean_weight", 1.0),
        "mean_weight_clean": w_clean / n_clean if n_clean else None,
        "mean_weight_noisy": w_noisy / n_noisy if n_noisy else None,
        "images_per_s": n_train / train_time, "_train_time_s": train_time, "_t0": t0,
    }


def _write_outputs(out_dir, metrics, history, losses, weights, model, vnet, arch, num_classes, recipe_dict):
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu_state = lambda m: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}  # noqa: E731
    with atomic_path(out_dir / "model.pt", suffix=".pt.tmp") as tmp:
        torch.save(
            {"model": cpu_state(model), "vnet": cpu_state(vnet) if vnet is not None else None, "arch": arch,
             "num_classes": num_classes, "recipe": recipe_dict},
            tmp,
        )
    write_text_atomic(out_dir / "history.csv", _csv_text(HISTORY_COLUMNS, history))
    write_text_atomic(
        out_dir / "weight_curve.csv",
        _csv_text(["loss", "weight"], [{"loss": a, "weight": b} for a, b in zip(losses, weights)]),
    )
    write_json_atomic(out_dir / "metrics.json", metrics)  # last: its presence means the run is complete
