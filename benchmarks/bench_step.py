"""Time one training step: plain SGD vs the MW-Net step (both meta-gradient routes).

    python benchmarks/bench_step.py                          # cuda if available, else cpu
    python benchmarks/bench_step.py --device cpu --quick --threads 1   # narrow WRN, few reps: ~1-2 min
    python benchmarks/bench_step.py --archs resnet32,wrn28_10 --reps 50 --precision bf16

Inputs are random, already-normalised float batches (augmentation is not part of the step), batch 100
for training and meta batches, as the protocol. Setup mirrors mwnet/train.py: the memory format as
training resolves it (--memory-format auto), and on CUDA cudnn.benchmark and TF32 matmuls. Each configuration gets fresh nets, `--warmup` untimed steps, then
`--reps` timed steps (CUDA events around each step; CPU: perf_counter); the median is reported.
Prints a markdown table, plus device, torch version and git commit. Arch names: resnetD (width 16)
or resnetD_W, wrnD_W (widen factor W), e.g. resnet32, wrn28_10.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from mwnet.config import BackboneSpec
from mwnet.meta_step import MetaWeightStep
from mwnet.nets import WeightingNet, build_backbone

METHODS = ("plain", "mwnet-jvp", "mwnet-double_backward")
VNET_SHAPE = "1-100-1"
NUM_CLASSES = 10
# Classifier SGD of the recipes; the weighting-net optimiser of the noise recipes.
CLASSIFIER_SGD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
VNET_SGD = dict(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)


def parse_arch(name: str) -> BackboneSpec:
    m = re.fullmatch(r"(resnet|wrn)(\d+)(?:_(\d+))?", name)
    if not m:
        raise SystemExit(f"bench_step: arch {name!r}: expected resnetD, resnetD_W or wrnD_W (e.g. wrn28_10)")
    kind, depth, width = m.group(1), int(m.group(2)), m.group(3)
    if kind == "wrn" and width is None:
        raise SystemExit(f"bench_step: arch {name!r}: give the widen factor, e.g. wrn28_10")
    return BackboneSpec(name=kind, depth=depth, width=int(width) if width else 16, dropout=0.0)


def git_commit() -> str:
    try:
        repo = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
        return sha + ("+uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model}, {torch.get_num_threads()} threads"


def make_step(method: str, spec: BackboneSpec, dev: torch.device, amp_dtype, fmt=None, compile_plain=False):
    torch.manual_seed(0)
    fmt = fmt if fmt is not None else (torch.channels_last if dev.type == "cuda" else torch.contiguous_format)
    model = build_backbone(spec, NUM_CLASSES).to(dev).to(memory_format=fmt)
    model.train()
    model_opt = torch.optim.SGD(model.parameters(), **CLASSIFIER_SGD)
    if method == "plain":
        amp = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype else nullcontext

        forward = torch.compile(model) if compile_plain else model

        def plain(x, y, x_meta, y_meta, lr):
            with amp():
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y)
            model_opt.zero_grad(set_to_none=True)
            loss.backward()
            model_opt.step()
            return {"loss": loss.detach()}

        plain.model = model  # as MetaWeightStep.model: graph_matches_eager compares parameters
        return plain
    vnet = WeightingNet(VNET_SHAPE).to(dev)
    vnet_opt = torch.optim.SGD(vnet.parameters(), **VNET_SGD)
    route = method.split("-", 1)[1]
    return MetaWeightStep(model, vnet, model_opt, vnet_opt, meta_gradient=route, autocast_dtype=amp_dtype)


def graphed(step, args, warmup: int):
    """The step captured as one CUDA graph (inputs are static tensors; lr is baked in): replay() runs it.

    What a training loop would gain by removing per-kernel launch cost; warm-up runs eagerly on a side
    stream first (optimizer state, cuDNN autotune), as torch.cuda.graphs' whole-network example does.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 3)):
            step(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(*args)
    return graph, out


def graph_matches_eager(method, spec, dev, amp_dtype, batch, steps: int = 5) -> float:
    """Largest relative parameter difference after the same steps run eagerly and as graph replays."""
    g = torch.Generator(device=dev).manual_seed(1)
    x, xm = (torch.randn(batch, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
             for _ in range(2))
    y, ym = (torch.randint(0, NUM_CLASSES, (batch,), device=dev, generator=g) for _ in range(2))
    eager, graph_step = make_step(method, spec, dev, amp_dtype), make_step(method, spec, dev, amp_dtype)
    graph, _ = graphed(graph_step, (x, y, xm, ym, 0.1), warmup=3)
    for _ in range(3 + steps):
        eager(x, y, xm, ym, 0.1)
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize(dev)
    pa = torch.cat([p.detach().flatten().float() for p in eager.model.parameters()])
    pb = torch.cat([p.detach().flatten().float() for p in graph_step.model.parameters()])
    return float((pa - pb).abs().max() / pa.abs().max())


def time_method(method, spec, dev, amp_dtype, batch, warmup, reps, cuda_graph: bool = False, fmt=None,
                compile_plain=False) -> dict:
    fmt = fmt if fmt is not None else (torch.channels_last if dev.type == "cuda" else torch.contiguous_format)
    t0 = time.perf_counter()
    step = make_step(method, spec, dev, amp_dtype, fmt, compile_plain)
    g = torch.Generator(device=dev).manual_seed(0)

    def batch_of(n):
        x = torch.randn(n, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=fmt)
        return x, torch.randint(0, NUM_CLASSES, (n,), device=dev, generator=g)

    x, y = batch_of(batch)
    xm, ym = batch_of(batch)
    if cuda_graph:
        graph, out = graphed(step, (x, y, xm, ym, 0.1), warmup)

        def step(*_):
            graph.replay()
            return out
    for _ in range(warmup):
        step(x, y, xm, ym, 0.1)
    setup_s = time.perf_counter() - t0  # with torch.compile: the compile time
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times_ms = []
    for _ in range(reps):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = step(x, y, xm, ym, 0.1)
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = step(x, y, xm, ym, 0.1)
            times_ms.append(1e3 * (time.perf_counter() - t0))
    if not torch.isfinite(out["loss"]).all():
        raise RuntimeError(f"{method} on {spec}: non-finite loss")
    res = {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "reps": reps, "setup_s": setup_s}
    if dev.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    ap.add_argument("--archs", default=None, help="comma list; default resnet32,wrn28_10 (quick: resnet32,wrn28_1)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {METHODS}")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per configuration (default 30; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; quick 1)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                    help="bf16: autocast forward passes; auto: what training picks here (mwnet/compute.py)")
    ap.add_argument("--memory-format", choices=("auto", "contiguous", "channels_last"), default="auto",
                    help="layout of images and weights; auto: what training uses (params/run.yaml's default)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the plain step with the model under torch.compile (inductor)")
    ap.add_argument("--quick", action="store_true", help="few reps and a narrow WRN (for CPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU intra-op threads (default: torch's). On a shared machine use 1: OpenMP threads "
                    "that wait on a busy core make every op orders of magnitude slower")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time each step captured as one CUDA graph, after checking that graph replays "
                    "give the same parameters as eager steps")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    archs = (args.archs or ("resnet32,wrn28_1" if args.quick else "resnet32,wrn28_10")).split(",")
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"bench_step: method {m!r}: expected one of {METHODS}")
    reps = args.reps or (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    from mwnet.compute import resolve_compute

    compute = resolve_compute(args.precision, args.memory_format, dev)
    amp_dtype = compute.autocast_dtype
    fmt = torch.channels_last if compute.channels_last else torch.contiguous_format
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    if args.cuda_graph and dev.type != "cuda":
        raise SystemExit("bench_step: --cuda-graph needs a CUDA device")

    header = {
        "date": datetime.date.today().isoformat(), "device": device_name(dev), "torch": torch.__version__,
        "commit": git_commit(), "precision": compute.precision, "memory_format": compute.memory_format,
        "batch": args.batch, "reps": reps,
        "warmup": warmup, "vnet": VNET_SHAPE, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }
    print(" | ".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    rows = []
    for arch in archs:
        spec = parse_arch(arch)
        plain_ms = None
        for method in methods:
            r = time_method(method, spec, dev, amp_dtype, args.batch, warmup, reps, fmt=fmt)
            if method == "plain":
                plain_ms = r["median_ms"]
            r.update(arch=arch, method=method, images_per_s=args.batch / (r["median_ms"] / 1e3),
                     ratio=r["median_ms"] / plain_ms if plain_ms else None)
            rows.append(r)
            print(f"  {arch:10s} {method:22s} {r['median_ms']:10.1f} ms", file=sys.stderr, flush=True)
            if args.compile and method == "plain":
                r = time_method(method, spec, dev, amp_dtype, args.batch, warmup, reps, fmt=fmt, compile_plain=True)
                r.update(arch=arch, method="plain+compile", images_per_s=args.batch / (r["median_ms"] / 1e3),
                         ratio=r["median_ms"] / plain_ms)
                rows.append(r)
                print(f"  {arch:10s} {'plain+compile':22s} {r['median_ms']:10.1f} ms (compile and warm-up "
                      f"{r['setup_s']:.0f} s)", file=sys.stderr, flush=True)
            if args.cuda_graph:
                name = method + "+graph"
                try:
                    diff = graph_matches_eager(method, spec, dev, amp_dtype, args.batch)
                    r = time_method(method, spec, dev, amp_dtype, args.batch, warmup, reps, cuda_graph=True, fmt=fmt)
                    r.update(arch=arch, method=name, images_per_s=args.batch / (r["median_ms"] / 1e3),
                             ratio=r["median_ms"] / plain_ms if plain_ms else None, graph_vs_eager=diff)
                    print(f"  {arch:10s} {name:22s} {r['median_ms']:10.1f} ms (max rel. param diff vs eager "
                          f"{diff:.1e})", file=sys.stderr, flush=True)
                except Exception as e:  # report, and go on with the other configurations
                    r = dict(arch=arch, method=name, median_ms=float("nan"), images_per_s=float("nan"),
                             ratio=None, error=f"{type(e).__name__}: {str(e)[:200]}")
                    print(f"  {arch:10s} {name:22s} FAILED: {r['error']}", file=sys.stderr, flush=True)
                rows.append(r)

    mem = dev.type == "cuda"
    print()
    print("| arch | step | median ms/step | x plain | images/s |" + (" peak GiB |" if mem else ""))
    print("|---|---|---:|---:|---:|" + ("---:|" if mem else ""))
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        line = f"| {r['arch']} | {r['method']} | {r['median_ms']:.1f} | {ratio} | {r['images_per_s']:.0f} |"
        print(line + (f" {r.get('peak_mem_gib', float('nan')):.2f} |" if mem else ""))
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
