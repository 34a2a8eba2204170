"""`mwnet train`: one training run of the grid (see mwnet/train.py)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one run (dataset x corruption x weighting-net shape or baseline x seed)",
        description=(
            "Train one MW-Net run with the recipe params/ gives the corruption. Resumes from "
            "OUT/checkpoint.pt when present; writes metrics.json, history.csv, weight_curve.csv and "
            "model.pt to OUT at the end and logs the run to MLflow."
        ),
    )
    p.add_argument("--dataset", required=True, help="cifar10 or cifar100")
    p.add_argument("--corruption", required=True, help="a corruption of params/corruptions.yaml, e.g. imbalance_100")
    p.add_argument("--arch", required=True, help="weighting-net shape '1-h1-...-hk-1', e.g. 1-100-1, or the baseline 'ce' "
                   "(plain cross-entropy, same schedule)")
    p.add_argument("--seed", required=True, type=int, help="run seed (data split and training)")
    p.add_argument("--profile", default=None, help="params profile (default: params/run.yaml)")
    p.add_argument("--params", default="params", help="parameter folder (default: params)")
    p.add_argument("--out", default=None, help="run folder (default: models_root/PROFILE/DATASET/CORRUPTION/ARCH/seedS)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto (cuda if present)")
    p.add_argument("--restart", action="store_true", help="discard an existing checkpoint and train from scratch")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; use 1 per job when several jobs "
                        "share the cores: oversubscribed threads slow CPU training down many times)")
    p.set_defaults(func=run_train)


def _terminate_as_interrupt(signum, frame):
    # Snakemake and schedulers stop jobs with SIGTERM: treat it like Ctrl-C so the MLflow run is
    # marked KILLED; the checkpoint of the last finished epoch stays for the next start.
    raise KeyboardInterrupt(f"signal {signum}")


def run_train(args) -> int:
    from mwnet import paths
    from mwnet.config import load_params
    from mwnet.train import train_run

    from mwnet.cli import UserError

    params = load_params(args.params, profile=args.profile)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else paths.run_dir(
        params.report.models_root, params.profile, args.dataset, args.corruption, args.arch, args.seed
    )
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        m = train_run(
            params, args.dataset, args.corruption, args.arch, args.seed, out,
            device=args.device, restart=args.restart, tracking=not args.no_tracking,
        )
    except KeyboardInterrupt:
        print(f"mwnet: interrupted; rerun the same command to resume from {out / paths.CHECKPOINT_FILE}",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{out}: best {m['best_acc']:.2f}% (epoch {m['best_epoch']}), final {m['final_acc']:.2f}%, "
          f"{m['wall_time_s']:.1f} s")
    return 0
