"""How a run computes: autocast precision and memory format, resolved once per run and recorded.

precision (the recipe's): "auto" is bf16 autocast wherever the device computes bf16 natively (CUDA;
a CPU with AVX512-BF16 or AMX), fp32 elsewhere; "fp32" and "bf16" force. On a CPU without native
bf16, a forced "bf16" is emulated: same arithmetic, slower than fp32 (the run says so).
memory_format (params/run.yaml): "auto" is channels_last (measured faster for these backbones on CUDA
and on both CPUs measured so far, benchmarks/README.md); "contiguous" and "channels_last" force.

A resumed run keeps what its checkpoint ran with (train.py), so that a run moved to another machine
is still one run in one precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class Compute:
    precision: str  # what runs: "fp32" or "bf16"
    memory_format: str  # "contiguous" or "channels_last"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@cache
def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def cpu_bf16_native() -> bool:
    """True when this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX): torch's own check,
    else the kernel's CPU flags."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        if any(p() for p in probes if p is not None):
            return True
    except Exception:  # a private torch helper that changed: fall back to the flags
        pass
    return bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def bf16_native(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_native())


def resolve_compute(precision: str, memory_format: str, device: torch.device) -> Compute:
    """The precision and memory format a run on `device` uses; ValueError for an unknown setting."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: allowed values: {', '.join(PRECISIONS)}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format {memory_format!r}: allowed values: {', '.join(MEMORY_FORMATS)}")
    native = bf16_native(device)
    ran = "bf16" if precision == "bf16" or (precision == "auto" and native) else "fp32"
    fmt = "channels_last" if memory_format == "auto" else memory_format
    return Compute(ran, fmt)
