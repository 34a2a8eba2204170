"""Know before you wait: how many runs a profile trains, on which device, and how long it will take.

The estimate is built from step times measured on this machine: for each backbone a profile uses, a
few timed steps of plain training and of the MW-Net step (random data, the recipe's batch size, or a
small batch scaled linearly when a full one would take long) and a timed evaluation pass. They are
cached per machine, torch version, device and thread count (~/.cache/mwnet/step_times.json, or
$MWNET_CACHE_DIR), so a second call costs nothing; a CPU entry measured on a busy machine is measured
again once the machine is quieter, keeping the faster times. A run's estimate is

    epochs x (steps per epoch x step time + test images x evaluation time per image)

which is what metrics.json's wall_time_s measures (the report puts both side by side); the grid's
wall time adds a fixed start-up per run and divides by the runs that go at once.

    mwnet plan [--profile P] [--cores N]     print the plan (any profile)
Snakemake prints the same plan before the first job (Snakefile onstart) and, on a CPU, stops when it
is above params/run.yaml's cpu_max_hours unless allow_long_cpu_run is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mwnet import paths
from mwnet.config import (
    BASELINES,
    DATASET_CLASSES,
    DATASET_TEST_SIZE,
    DATASET_TRAIN_PER_CLASS,
    Params,
    load_params,
)
from mwnet.compute import Compute, resolve_compute
from mwnet.io import write_json_atomic, write_text_atomic

BUSY_LOAD = 0.75  # load per core above which a CPU measurement is redone when the machine is quieter
START_UP_S = 10.0  # per run: process start, imports, data load, MLflow (not part of wall_time_s)
QUICK_PROBE_S = 2.0  # a full-batch probe step is used when it is expected below this; else a small batch
SMALL_BATCH = 4


# ------------------------------------------------------------------------------------------------
# step times, measured and cached


def cache_path() -> Path:
    root = os.environ.get("MWNET_CACHE_DIR") or Path.home() / ".cache" / "mwnet"
    return Path(root) / "step_times.json"


def _machine_key(device: str, threads: int) -> dict:
    import torch

    if device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        from mwnet.compute import cpu_name

        where = cpu_name()
    return {"device": device, "where": where, "torch": torch.__version__, "threads": threads}


@dataclass(frozen=True)
class StepTimes:
    """Seconds per step at `batch` for plain and MW-Net training; evaluation seconds per image."""

    batch: int
    plain_s: float
    mwnet_s: float
    eval_per_image_s: float

    def step_s(self, kind: str, batch: int) -> float:
        # linear in the batch: exact when the probe ran at the recipe's batch, a CPU approximation otherwise
        return (self.plain_s if kind == "plain" else self.mwnet_s) * batch / self.batch


def _time_steps(step, x, y, n: int, warmup: bool = True) -> float:
    if warmup:  # allocations, cuDNN autotune; negligible next to a step of a second or more
        step(x, y, x, y, 0.1)
    _sync(x)
    t0 = time.perf_counter()
    for _ in range(n):
        step(x, y, x, y, 0.1)
    _sync(x)
    return (time.perf_counter() - t0) / n


def _sync(x):
    import torch

    if x.device.type == "cuda":
        torch.cuda.synchronize()


def probe(backbone, num_classes: int, batch: int, device: str, threads: int, compute=None, *,
          optimizers, vnet_arch: str) -> StepTimes:
    """Measure one backbone: plain and MW-Net steps, and evaluation, on random data, with the precision
    and memory format training uses (mwnet.compute.Compute; default: what `auto` picks here) and the
    recipe's optimisers (classifier, weighting net). One weighting-net shape stands for all: its
    few hundred parameters cost nothing beside the backbone's."""
    import torch

    from mwnet.meta_step import MetaWeightStep
    from mwnet.nets import WeightingNet, build_backbone
    from mwnet.plain_step import PlainStep
    from mwnet.train import build_optimizer

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        compute = compute or resolve_compute("auto", "auto", dev)
        amp = compute.autocast_dtype
        fmt = torch.channels_last if compute.channels_last else torch.contiguous_format
        g = torch.Generator().manual_seed(0)

        def fresh():
            model = build_backbone(backbone, num_classes).to(dev).to(memory_format=fmt)
            return model, build_optimizer(optimizers[0], model.parameters())

        def data(b):
            x = torch.randn(b, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=fmt)
            return x, torch.randint(0, num_classes, (b,), generator=g).to(dev)

        model, opt = fresh()
        b = min(batch, SMALL_BATCH)
        x, y = data(b)
        plain = _time_steps(PlainStep(model, opt, autocast_dtype=amp), x, y, 1)
        slow = plain > 1.0
        if dev.type == "cuda" or plain * batch / b < QUICK_PROBE_S:  # cheap enough at the real batch
            b = batch
            x, y = data(b)
            plain = _time_steps(PlainStep(model, opt, autocast_dtype=amp), x, y, 2)
        model, opt = fresh()
        vnet = WeightingNet(vnet_arch).to(dev)
        vopt = build_optimizer(optimizers[1], vnet.parameters())
        mw = _time_steps(MetaWeightStep(model, vnet, opt, vopt, autocast_dtype=amp), x, y, 1 if slow else 2,
                         warmup=not slow)
        model.eval()
        amp_ctx = torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext()
        with torch.no_grad(), amp_ctx:
            xe, _ = data(b)
            if not slow:
                model(xe)
            _sync(xe)
            t0 = time.perf_counter()
            model(xe)
            _sync(xe)
            ev = (time.perf_counter() - t0) / len(xe)
        return StepTimes(b, plain, mw, ev)
    finally:
        torch.set_num_threads(old_threads)


def cache_key(backbone, batch: int, device: str, threads: int, compute: Compute | None = None) -> tuple[dict, str]:
    """(what a cached entry is for, its key in the cache file)."""
    import torch

    compute = compute or resolve_compute("auto", "auto", torch.device(device))
    key = dict(_machine_key(device, threads), backbone=backbone.model_dump(mode="json"), batch=batch,
               **compute.as_dict())
    return key, hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def seed_cache(entries: list[tuple[object, int, str, int, "StepTimes"]]) -> None:
    """Write step times without measuring (tests; or times measured elsewhere): (backbone, batch,
    device, threads, times) each."""
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    for backbone, batch, device, threads, times in entries:
        key, digest = cache_key(backbone, batch, device, threads)
        cache[digest] = {"key": key, "times": times.__dict__}
    write_json_atomic(path, cache)


def cpu_load() -> float:
    """1-minute load average per core (0 where the OS does not tell)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def step_times(backbone, num_classes: int, batch: int, device: str, threads: int,
               measure: bool = True, compute: Compute | None = None, *, optimizers=None,
               vnet_arch: str | None = None) -> StepTimes | None:
    """Cached probe; None when not cached and measure is False.

    A CPU entry measured on a busy machine (load per core above BUSY_LOAD) overstates the times: it is
    measured again when the machine is quieter, and the faster of the two is kept (other work can only
    slow a step down, so the minimum is the better estimate of what a run here will see).
    """
    key, digest = cache_key(backbone, batch, device, threads, compute)
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    old = cache.get(digest)
    load = cpu_load() if device == "cpu" else 0.0
    if old is not None and not (measure and old.get("load", 0.0) > BUSY_LOAD and load < old["load"] - 0.25):
        return StepTimes(**old["times"])
    if not measure:
        return None
    # the class count changes only the last layer
    times = probe(backbone, 10, batch, device, threads, compute, optimizers=optimizers, vnet_arch=vnet_arch)
    if old is not None and old["times"]["batch"] == times.batch:
        times = StepTimes(times.batch, *(min(getattr(times, f), old["times"][f])
                                         for f in ("plain_s", "mwnet_s", "eval_per_image_s")))
        load = min(load, old.get("load", 0.0))
    try:  # re-read: another process may have added entries meanwhile
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    cache[digest] = {"key": key, "times": times.__dict__, "load": round(load, 2)}
    write_json_atomic(path, cache)
    return times


# ------------------------------------------------------------------------------------------------
# runs


def train_size(params: Params, dataset: str, corruption: str) -> int:
    """Training images of a run (after the meta split, the corruption and the recipe's subset)."""
    from mwnet.data.corrupt import imbalance_counts

    c, C = params.corruptions[corruption], DATASET_CLASSES[dataset]
    per_class = DATASET_TRAIN_PER_CLASS[dataset] - c.meta_count_per_class(C)
    n = sum(imbalance_counts(per_class, C, c.factor)) if c.kind == "imbalance" else per_class * C
    sub = params.recipe_for(corruption).train_subset
    return min(n, sub) if sub else n


def test_size(params: Params, dataset: str, corruption: str) -> int:
    sub = params.recipe_for(corruption).test_subset
    return min(DATASET_TEST_SIZE[dataset], sub) if sub else DATASET_TEST_SIZE[dataset]


def run_estimate(params: Params, dataset: str, corruption: str, arch: str, device: str, threads: int = 1,
                 measure: bool = True) -> float | None:
    """Estimated seconds of training + evaluation (metrics.json's wall_time_s) of one run."""
    import torch

    r = params.recipe_for(corruption)
    compute = resolve_compute(r.precision, params.run.memory_format, torch.device(device))  # what training uses
    t = step_times(r.backbone, DATASET_CLASSES[dataset], r.batch_size, device, threads, measure=measure,
                   compute=compute, optimizers=(r.classifier_optimizer, r.weighting_optimizer),
                   vnet_arch=params.grid.archs[0])
    if t is None:
        return None
    n = train_size(params, dataset, corruption)
    steps = math.ceil(n / r.batch_size)
    kind = "plain" if arch in BASELINES else "mwnet"
    per_epoch = steps * t.step_s(kind, r.batch_size) + test_size(params, dataset, corruption) * t.eval_per_image_s
    return r.epochs * per_epoch


def is_done(params: Params, dataset: str, corruption: str, arch: str, seed: int) -> bool:
    """A finished run of the current recipe (what the report counts)."""
    d = paths.run_dir(params.report.models_root, params.profile, dataset, corruption, arch, seed)
    try:
        made_with = json.loads((d / "metrics.json").read_text()).get("recipe") or {}
    except (OSError, json.JSONDecodeError):
        return False
    want = params.run_recipe(corruption, arch)
    return {k: made_with.get(k) for k in want} == want


@dataclass
class Plan:
    profile: str
    device: str
    threads: int
    at_once: int
    runs: list[tuple[tuple, float | None, bool]]  # (cell, estimated seconds, done)
    computes: dict[str, str] | None = None  # corruption -> "fp32, channels_last": what its runs compute with

    @property
    def todo(self):
        return [r for r in self.runs if not r[2]]

    @property
    def wall_s(self) -> float | None:
        est = [e for _, e, _ in self.todo]
        if any(e is None for e in est):
            return None
        return sum(e + START_UP_S for e in est) / max(1, min(self.at_once, len(est)))


def make_plan(params: Params, cores: int, device: str | None = None, threads: int = 1, gpus: int | None = None,
              measure: bool = True, every_run: bool = False) -> Plan:
    """every_run: estimate every run of the grid as if none had finished (what regenerating the
    whole table costs here)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":  # one run per GPU at a time (several runs sharing one GPU slow each other)
        at_once = gpus or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    else:  # Snakemake may start more jobs than there are cores, but they then share them
        at_once = max(1, min(cores, os.cpu_count() or cores) // max(1, threads))
    can_measure = measure and (device == "cpu" or torch.cuda.is_available())
    runs = []
    for cell in params.cells():
        done = False if every_run else is_done(params, *cell)
        est = None if done and not can_measure else run_estimate(params, *cell[:3], device, threads,
                                                                 measure=can_measure)
        runs.append((cell, est, done))
    computes = {c: ", ".join(resolve_compute(params.recipe_for(c).precision, params.run.memory_format,
                                             torch.device(device)).as_dict().values())
                for c in {cell[1] for cell in params.cells()}}
    return Plan(params.profile, device, threads, at_once, runs, computes)


def human(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 72 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def describe(plan: Plan) -> str:
    done = len(plan.runs) - len(plan.todo)
    where = (f"{plan.device}, {plan.threads} thread(s) per run, {plan.at_once} run(s) at a time"
             if plan.device == "cpu" else f"{plan.device}, {plan.at_once} GPU(s)")
    lines = [f"mwnet plan: profile {plan.profile} on {where}",
             f"  {len(plan.runs)} runs: {done} done, {len(plan.todo)} to train; estimated wall time "
             f"{human(plan.wall_s) if plan.todo else '0 s'}"]
    by_recipe: dict[tuple, list[float | None]] = {}
    for (ds, c, arch, _), est, is_done_ in plan.todo:
        kind = "CE" if arch in BASELINES else "MW-Net"
        by_recipe.setdefault((ds, c, kind), []).append(est)
    for (ds, c, kind), ests in by_recipe.items():
        how = f" ({plan.computes[c]})" if plan.computes and c in plan.computes else ""
        lines.append(f"    {ds} {c}: {len(ests)} {kind} run(s), about {human(ests[0])} each{how}")
    if plan.todo and plan.wall_s is None:
        lines.append("  (no step time measured for this device here: estimates need a run on it)")
    else:
        lines.append(f"  (step times measured on this machine; cache: {cache_path()})")
    return "\n".join(lines)


def guard_message(params: Params, plan: Plan, cores: int, threads: int) -> str | None:
    """Why a CPU plan must not start (too long), with the cheaper profiles; None when it may go."""
    if plan.device != "cpu" or params.run.allow_long_cpu_run or plan.wall_s is None:
        return None
    if plan.wall_s <= params.run.cpu_max_hours * 3600:
        return None
    others = []
    for name in available_profiles(params.params_dir):
        if name == params.profile:
            continue
        try:
            other = make_plan(load_params(params.params_dir, profile=name), cores, "cpu", threads)
        except Exception:  # a broken profile file must not hide the advice
            continue
        if other.wall_s is not None and other.wall_s <= params.run.cpu_max_hours * 3600:
            others.append(f"{name} (about {human(other.wall_s)}, {len(other.runs)} runs)")
    return (
        f"mwnet: profile {params.profile} would take about {human(plan.wall_s)} on this CPU, more than "
        f"cpu_max_hours = {params.run.cpu_max_hours:g} (params/run.yaml). Nothing was started.\n"
        f"  Cheaper profiles: {', '.join(others) or 'none fits'}; e.g. snakemake --cores {cores} all --config "
        f"profile={(others[0].split()[0] if others else 'quick')}\n"
        "  Run it anyway: add --config allow_long_cpu_run=true (or set allow_long_cpu_run: true in "
        "params/run.yaml); on a GPU machine nothing stops."
    )


def available_profiles(params_dir: str | Path) -> list[str]:
    return sorted({"full"} | {p.stem for p in (Path(params_dir) / "profiles").glob("*.yaml")})


def write_progress_file(path: Path, plan: Plan, stamps: list[str]) -> None:
    """For the per-job progress line (workflow/scripts/stamp.py progress): each run's stamp and estimate."""
    write_json_atomic(path, {
        "profile": plan.profile, "at_once": plan.at_once, "start_up_s": START_UP_S,
        "runs": [{"stamp": s, "estimate_s": e} for s, (_, e, _) in zip(stamps, plan.runs)],
    })


# ------------------------------------------------------------------------------------------------
# CLI


def _run(args) -> int:
    params = load_params(args.params, profile=args.profile)
    plan = make_plan(params, args.cores, None if args.device == "auto" else args.device, args.threads,
                     every_run=args.every_run)
    if args.out:
        write_text_atomic(Path(args.out), describe(plan) + "\n")
    else:
        print(describe(plan))
    msg = guard_message(params, plan, args.cores, args.threads)
    if msg:
        print(msg, file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="how many runs a profile trains and how long it will take here",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--params", default="params", help="parameter folder (default: params)")
    p.add_argument("--profile", default=None, help="params profile (default: params/run.yaml)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores Snakemake may use (default: all)")
    p.add_argument("--threads", type=int, default=1, help="threads per training run (default 1, as the pipeline)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--every-run", action="store_true",
                   help="estimate every run, finished ones too: what regenerating the whole table costs here")
    p.add_argument("--out", default=None, help="write the plan to this file (atomically) instead of stdout")
    p.set_defaults(func=_run)
