"""Atomic save / load of the full training state, and the check that a checkpoint belongs to this run.

The checkpoint holds everything a resumed run needs to continue bit-for-bit on CPU: model, weighting
net, both optimisers, the lr scheduler, every random generator's state, the epoch, the history, the best
accuracy so far and the MLflow run id. Its "fingerprint" records what the run IS (recipe, arch,
seed, data split, device type): a checkpoint with another fingerprint is refused, never silently
resumed. On CUDA the run picks cuDNN's autotuned kernels (cudnn.benchmark), which are not
deterministic, so a resumed GPU run continues the same computation but matches an uninterrupted one
only up to rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mwnet.cli import UserError
from mwnet.io import atomic_path


class CheckpointMismatch(UserError):
    """The checkpoint in out_dir was made by a different run configuration."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_path(path, suffix=".pt.tmp") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and how to get past it
        raise UserError(f"cannot read checkpoint {path}: {e}; rerun with --restart to discard it") from e


def check_fingerprint(path: str | Path, saved: dict[str, Any], current: dict[str, Any],
                      optional: tuple[str, ...] = ()) -> None:
    """Raise CheckpointMismatch naming every field that differs between `saved` and `current`. A key
    in `optional` that the saved fingerprint lacks (an older checkpoint format) is not compared."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in optional and key not in saved:
            continue
        a, b = saved.get(key), current.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                inner = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diffs.append(f"{key} ({', '.join(inner)})")
            else:
                diffs.append(f"{key}: checkpoint {a!r}, now {b!r}")
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {path} was made by a different run: " + "; ".join(diffs)
            + ". Rerun with --restart to discard it and train from scratch."
        )
