"""One GPU per training process on a machine with several: the first GPU nobody holds, by file lock.

Snakemake caps how many training jobs run at once (`--resources gpu=N`) but does not say which GPU a
job should use. Each `mwnet train` on CUDA therefore takes a slot: an exclusive, non-blocking fcntl
lock on `<lock_dir>/gpu<i>.lock` for the first free i among the visible GPUs, held until the process
exits (the kernel drops it when the process dies, also on a kill, so no slot is ever leaked). With
N jobs on N GPUs every job finds a free slot at once; with more jobs than GPUs the extra ones wait.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

_held: list[IO] = []  # open lock files of this process (closing one releases its slot)


def default_lock_dir() -> Path:
    """Per-user, per-machine: MWNET_GPU_LOCK_DIR, else <tmp>/mwnet-gpu-slots-<uid>."""
    env = os.environ.get("MWNET_GPU_LOCK_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"mwnet-gpu-slots-{os.getuid()}"


def try_acquire(n_gpus: int, lock_dir: Path) -> int | None:
    """Lock the first free slot 0..n_gpus-1 and return its index (the lock stays held), or None."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_gpus):
        f = open(lock_dir / f"gpu{i}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held.append(f)
        return i
    return None


def acquire(n_gpus: int, lock_dir: Path | None = None, poll_s: float = 5.0, timeout_s: float | None = None) -> int:
    """Block until a slot is free; return its GPU index. Raises TimeoutError after timeout_s."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    lock_dir = lock_dir or default_lock_dir()
    t0, said = time.monotonic(), False
    while True:
        slot = try_acquire(n_gpus, lock_dir)
        if slot is not None:
            return slot
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no free GPU slot among {n_gpus} in {lock_dir} after {timeout_s:g} s")
        if not said:
            print(f"all {n_gpus} GPUs are taken by other mwnet runs ({lock_dir}); waiting for one",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)


def release_all() -> None:
    while _held:
        _held.pop().close()
