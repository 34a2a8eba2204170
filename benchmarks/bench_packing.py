"""Throughput of 1, 4, 8 ... training processes sharing one device: does packing runs on a GPU pay?

    python benchmarks/bench_packing.py                               # cuda: resnet32 MW-Net step, 1,4,8 processes
    python benchmarks/bench_packing.py --device cpu --procs 1,2 --seconds 5 --archs resnet8 --batch 20  # dry run

One ResNet-32 at batch 100 launches many small kernels and leaves most of a large GPU idle, so several
runs side by side (Snakemake `--resources gpu=N`, params/run.yaml `runs_per_gpu`) may finish more cells
per GPU-hour. For each process count P, P fresh processes (spawned: CUDA does not fork) each build the
step of bench_step.py (same nets, optimisers and CUDA settings as mwnet/train.py), warm up, meet at a
barrier, then step for `--seconds`; each counts its steps. Reported: steps/s of one process, of all
together, the gain over P=1, and each process's peak memory. A cell's time is its step count divided
by one process's rate (evaluation and data handling come on top).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import NUM_CLASSES, device_name, git_commit, make_step, parse_arch  # noqa: E402


def worker(rank, dev_name, arch, method, precision, batch, warmup, seconds, barrier, results):
    dev = torch.device(dev_name)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # P processes on P cores; more threads per process only contend
    else:
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    fmt = torch.channels_last  # what training uses (params/run.yaml memory_format: auto)
    step = make_step(method, parse_arch(arch), dev, amp_dtype, fmt)
    g = torch.Generator(device=dev).manual_seed(rank)
    x = torch.randn(batch, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=fmt)
    xm = torch.randn(batch, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=fmt)
    y, ym = (torch.randint(0, NUM_CLASSES, (batch,), device=dev, generator=g) for _ in range(2))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step(x, y, xm, ym, 0.1)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    barrier.wait()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        out = step(x, y, xm, ym, 0.1)
        n += 1
        if n % 10 == 0:
            sync()  # keep the host from queueing far ahead of the device: the clock must see the work
    sync()
    elapsed = time.perf_counter() - t0
    ok = bool(torch.isfinite(out["loss"]).all())
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    results.put({"rank": rank, "steps": n, "elapsed_s": elapsed, "finite": ok, "peak_mem_gib": peak})


def measure(procs, dev_name, arch, method, precision, batch, warmup, seconds) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=worker, args=(r, dev_name, arch, method, precision, batch, warmup, seconds,
                                           barrier, results)) for r in range(procs)]
    for p in ps:
        p.start()
    got = [results.get(timeout=600 + 20 * seconds) for _ in ps]
    for p in ps:
        p.join()
    if any(p.exitcode for p in ps) or not all(r["finite"] for r in got):
        raise RuntimeError(f"{procs} processes: a worker failed ({[p.exitcode for p in ps]}, {got})")
    per = [r["steps"] / r["elapsed_s"] for r in got]
    peaks = [r["peak_mem_gib"] for r in got if r["peak_mem_gib"] is not None]
    return {"procs": procs, "steps_per_s_each": sum(per) / len(per), "steps_per_s_total": sum(per),
            "steps": [r["steps"] for r in got], "peak_mem_gib_each": max(peaks) if peaks else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    ap.add_argument("--procs", default="1,4,8", help="comma list of process counts")
    ap.add_argument("--archs", default="resnet32")
    ap.add_argument("--method", default="mwnet-jvp", help="plain, mwnet-jvp or mwnet-double_backward")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=15.0, help="timed window per process count")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    dev_name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    procs = [int(p) for p in args.procs.split(",")]
    header = {"date": datetime.date.today().isoformat(), "device": device_name(torch.device(dev_name)),
              "torch": torch.__version__, "commit": git_commit(), "method": args.method,
              "precision": args.precision, "batch": args.batch, "seconds": args.seconds,
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    print(" | ".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    rows = []
    for arch in args.archs.split(","):
        base = None
        for p in procs:
            r = measure(p, dev_name, arch, args.method, args.precision, args.batch, args.warmup, args.seconds)
            base = base or r["steps_per_s_total"] / p  # the P=1 row when it comes first
            r.update(arch=arch, gain=r["steps_per_s_total"] / base)
            rows.append(r)
            print(f"  {arch} x{p}: {r['steps_per_s_total']:.1f} steps/s in all", file=sys.stderr, flush=True)
    mem = any(r["peak_mem_gib_each"] is not None for r in rows)
    print()
    print("| arch | processes | steps/s each | steps/s in all | x one process |" + (" peak GiB each |" if mem else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|" if mem else ""))
    for r in rows:
        line = (f"| {r['arch']} | {r['procs']} | {r['steps_per_s_each']:.2f} | {r['steps_per_s_total']:.2f} "
                f"| {r['gain']:.2f} |")
        print(line + (f" {r['peak_mem_gib_each']:.2f} |" if mem else ""))
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
