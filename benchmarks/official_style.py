"""A deliberately plain re-implementation of the official MW-Net code's *design*, as a speed reference.

This is "what users run today", written by us (no upstream code copied), so that benchmarks/RESULTS.md
can put our training step beside it. What it keeps from the official design:
- fp32 everywhere (no autocast, no channels_last, no cudnn.benchmark);
- every iteration builds a fresh copy of the classifier and copies the real model's state into it
  (the official code's `meta_model = build_model(); meta_model.load_state_dict(model.state_dict())`);
- the virtual step by double backward (`autograd.grad(..., create_graph=True)`), the meta loss on the
  virtual parameters, the weighting-net step, then a *second* forward of the real model on the same
  batch for the actual step;
- `if norm != 0` on the weight sum (a host sync every iteration);
- data from a torch DataLoader over PIL images with per-sample torchvision transforms on the CPU
  (RandomCrop(32, padding=4, reflect), RandomHorizontalFlip, ToTensor, Normalize), pin_memory, and
  the official default of no worker processes (`--workers` to change it).

Timed: wall clock per iteration including data loading, over `--steps` iterations after `--warmup`,
on random uint8 images (the augmentation cost does not depend on the pixels). Prints one markdown row
per arch.

    python benchmarks/official_style.py --archs resnet32,wrn28_10 --steps 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import NUM_CLASSES, VNET_SHAPE, CLASSIFIER_SGD, VNET_SGD, device_name, git_commit, parse_arch  # noqa: E402

from mwnet.config import load_params  # noqa: E402
from mwnet.nets import WeightingNet, build_backbone  # noqa: E402


AUG = load_params(Path(__file__).resolve().parents[1] / "params").data.augmentation


class PilCifar(torch.utils.data.Dataset):
    """Per-sample PIL pipeline, as torchvision's CIFAR10 dataset with the official transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = T.Compose([
            T.RandomCrop(32, padding=AUG.crop_padding, padding_mode="reflect"),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([m / 255 for m in AUG.mean_255], [s / 255 for s in AUG.std_255]),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def endless(loader):
    while True:
        yield from loader


def run(arch: str, dev: torch.device, steps: int, warmup: int, workers: int, batch: int) -> dict:
    spec = parse_arch(arch)
    rng = np.random.default_rng(0)
    n = batch * (steps + warmup + 2)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, n)
    loader_args = dict(batch_size=batch, shuffle=True, num_workers=workers, pin_memory=dev.type == "cuda")
    train = endless(torch.utils.data.DataLoader(PilCifar(images, labels), **loader_args))
    meta = endless(torch.utils.data.DataLoader(PilCifar(images[: 10 * batch], labels[: 10 * batch]), **loader_args))

    torch.manual_seed(0)
    model = build_backbone(spec, NUM_CLASSES).to(dev)
    vnet = WeightingNet(VNET_SHAPE).to(dev)
    opt_model = torch.optim.SGD(model.parameters(), **CLASSIFIER_SGD)
    opt_vnet = torch.optim.SGD(vnet.parameters(), **VNET_SGD)
    lr = CLASSIFIER_SGD["lr"]

    def iteration():
        x, y = next(train)
        x, y = x.to(dev), y.to(dev)
        model.train()
        meta_model = build_backbone(spec, NUM_CLASSES).to(dev)  # rebuilt every step
        meta_model.load_state_dict(model.state_dict())
        meta_model.train()
        names, params = zip(*meta_model.named_parameters())
        cost = F.cross_entropy(meta_model(x), y, reduction="none").reshape(-1, 1)
        v = vnet(cost.data)
        norm = torch.sum(v)
        v = v / norm if norm != 0 else v  # host sync, as upstream
        grads = torch.autograd.grad(torch.sum(cost * v), params, create_graph=True)
        virtual = {k: p - lr * g for k, p, g in zip(names, params, grads)}
        xm, ym = next(meta)
        xm, ym = xm.to(dev), ym.to(dev)
        meta_loss = F.cross_entropy(functional_call(meta_model, virtual, (xm,)), ym)
        opt_vnet.zero_grad()
        meta_loss.backward()
        opt_vnet.step()
        cost = F.cross_entropy(model(x), y, reduction="none").reshape(-1, 1)  # second forward
        with torch.no_grad():
            w = vnet(cost)
        norm = torch.sum(w)
        w = w / norm if norm != 0 else w
        opt_model.zero_grad()
        torch.sum(cost * w).backward()
        opt_model.step()

    for _ in range(warmup):
        iteration()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        iteration()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ms = 1e3 * (time.perf_counter() - t0) / steps
    row = {"arch": arch, "method": "official-style", "mean_ms": ms, "images_per_s": batch / (ms / 1e3),
           "steps": steps, "workers": workers}
    if dev.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--archs", default="resnet32,wrn28_10")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (official default: 0)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    header = {"device": device_name(dev), "torch": torch.__version__, "commit": git_commit(),
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    print(" | ".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    rows = [run(a, dev, args.steps, args.warmup, args.workers, args.batch) for a in args.archs.split(",")]
    print("\n| arch | step | mean ms/step (incl. data) | images/s | peak GiB |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arch']} | official-style (fp32, rebuild, PIL, {r['workers']} workers) | {r['mean_ms']:.1f} "
              f"| {r['images_per_s']:.0f} | {r.get('peak_mem_gib', float('nan')):.2f} |")
    if args.json:
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
