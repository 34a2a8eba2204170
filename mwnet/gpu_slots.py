"""At most K training processes per GPU on a machine with several: the least-used GPU, by file lock.

Snakemake caps how many training jobs run at once (`--resources gpu=N`) but does not say which GPU a
job should use. Each `mwnet train` on CUDA therefore takes a slot: an exclusive, non-blocking file
lock (filelock: flock underneath) on `<lock_dir>/gpu<g>.<k>.lock`, the k-th of the K = params/run.yaml `runs_per_gpu` shares of
GPU g, held until the process exits (the kernel drops it when the process dies, also on a kill, so
no slot is ever leaked). Shares are tried k-major (every GPU's first share before any GPU's second),
so runs spread over the GPUs before they pack. With N*K jobs on N GPUs every job finds a slot at
once; extra jobs wait for one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout

_held: list[FileLock] = []  # the slots this process holds (releasing one frees it)


def default_lock_dir() -> Path:
    """Per-user, per-machine: MWNET_GPU_LOCK_DIR, else <tmp>/mwnet-gpu-slots-<uid>."""
    env = os.environ.get("MWNET_GPU_LOCK_DIR")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"mwnet-gpu-slots-{os.getuid()}"


def try_acquire(n_gpus: int, lock_dir: Path, runs_per_gpu: int = 1) -> int | None:
    """Lock the first free slot and return its GPU index (the lock stays held), or None."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for k, i in ((k, i) for k in range(runs_per_gpu) for i in range(n_gpus)):
        # a new lock object per attempt: a slot held by this very process is busy too
        lock = FileLock(lock_dir / f"gpu{i}.{k}.lock", is_singleton=False, thread_local=False,
                        on_acquired=_write_pid)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            continue
        _held.append(lock)
        return i
    return None


def _write_pid(fd: int) -> None:
    """Who holds the slot, for a person looking at the lock folder."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())


def acquire(n_gpus: int, lock_dir: Path | None = None, poll_s: float = 5.0, timeout_s: float | None = None,
            runs_per_gpu: int = 1) -> int:
    """Block until a slot is free; return its GPU index. Raises TimeoutError after timeout_s."""
    if n_gpus < 1 or runs_per_gpu < 1:
        raise ValueError(f"n_gpus and runs_per_gpu must be >= 1, got {n_gpus}, {runs_per_gpu}")
    lock_dir = lock_dir or default_lock_dir()
    t0, said = time.monotonic(), False
    while True:
        slot = try_acquire(n_gpus, lock_dir, runs_per_gpu)
        if slot is not None:
            return slot
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no free GPU slot among {n_gpus} x {runs_per_gpu} in {lock_dir} after {timeout_s:g} s")
        if not said:
            print(f"all {n_gpus} GPUs hold {runs_per_gpu} mwnet run(s) each (runs_per_gpu, params/run.yaml; "
                  f"locks in {lock_dir}); waiting for a slot",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)


def release_all() -> None:
    while _held:
        _held.pop().release(force=True)
