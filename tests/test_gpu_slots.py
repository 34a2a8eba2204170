"""GPU slots: concurrent training processes on a multi-GPU machine each get a different GPU."""

import subprocess
import sys
import textwrap

import pytest
import torch

from mwnet import gpu_slots

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mwnet import gpu_slots
    print(gpu_slots.acquire(int(sys.argv[1]), Path(sys.argv[2]), poll_s=0.05, timeout_s=float(sys.argv[3])), flush=True)
    sys.stdin.readline()  # hold the slot until told to go
""")


def holder(n, lock_dir, timeout=5.0):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(n), str(lock_dir), str(timeout)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def test_processes_get_distinct_slots_and_a_killed_one_frees_its_slot(tmp_path):
    a, slot_a = holder(2, tmp_path)
    b, slot_b = holder(2, tmp_path)
    assert {slot_a, slot_b} == {"0", "1"}
    c, slot_c = holder(2, tmp_path, timeout=0.3)  # both taken: waits, then gives up
    assert slot_c == "" and c.wait(10) != 0 and "no free GPU slot" in c.stderr.read()
    a.kill()  # SIGKILL: the kernel drops its lock
    a.wait(10)
    d, slot_d = holder(2, tmp_path)
    assert slot_d == slot_a
    for p in (b, d):
        p.communicate("\n", timeout=10)


def test_in_process_slots_and_release(tmp_path):
    assert gpu_slots.try_acquire(1, tmp_path) == 0
    try:
        assert gpu_slots.try_acquire(1, tmp_path) is None  # flock is per open file: even this process waits
    finally:
        gpu_slots.release_all()
    assert gpu_slots.try_acquire(1, tmp_path) == 0
    gpu_slots.release_all()
    with pytest.raises(ValueError):
        gpu_slots.acquire(0, tmp_path)


def test_runs_per_gpu_spreads_first_then_packs_then_waits(tmp_path):
    got = [gpu_slots.try_acquire(2, tmp_path, runs_per_gpu=3) for _ in range(7)]
    try:
        assert got == [0, 1, 0, 1, 0, 1, None]  # every GPU's first share before any second; 6 slots in all
    finally:
        gpu_slots.release_all()
    with pytest.raises(ValueError):
        gpu_slots.acquire(2, tmp_path, runs_per_gpu=0)


def test_training_takes_a_slot_only_with_several_gpus(tmp_path, monkeypatch):
    from mwnet.train import resolve_device

    chosen = []
    monkeypatch.setenv("MWNET_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda") and chosen == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    try:
        assert gpu_slots.try_acquire(1, tmp_path) == 0  # GPU 0 held by "another run"
        assert resolve_device("auto") == torch.device("cuda", 1) and chosen == [1]
        assert resolve_device("cuda", runs_per_gpu=2) == torch.device("cuda", 2)  # GPU 2's first share
        assert resolve_device("cuda", runs_per_gpu=2) == torch.device("cuda", 0)  # then GPU 0's second
    finally:
        gpu_slots.release_all()
