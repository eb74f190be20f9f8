"""Which floating-point precision Chronos-2 runs in: ``auto`` picks bfloat16 where the hardware computes it natively.

- On a CPU, bfloat16 is fast only with native bf16 matrix instructions: AMX (``amx_bf16``) or
  AVX512-BF16 (``avx512_bf16``), read from the ``flags`` line of ``/proc/cpuinfo``. Without them
  torch emulates bf16 and it is slower than float32, so ``auto`` keeps float32.
- On a CUDA GPU, bfloat16 tensor cores arrived with compute capability 8.0 (Ampere); older cards
  get float32.

``float32`` and ``bfloat16`` force one precision whatever the hardware. The precision a forecast was
made in is part of its ``model_version``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from forecasting_pipeline.forecasting.device import Cuda

Dtype = Literal["float32", "bfloat16"]
DtypeSetting = Literal["auto", "float32", "bfloat16"]
DTYPE_SETTINGS: tuple[str, ...] = ("auto", "float32", "bfloat16")

# CPU flags (as Linux names them in /proc/cpuinfo) of native bfloat16 matrix arithmetic.
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# The first CUDA compute capability with bfloat16 tensor cores (A100, sm_80).
CUDA_BF16_CAPABILITY = (8, 0)
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU feature flags of a ``/proc/cpuinfo`` text (its first ``flags`` line; x86 only)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def machine_cpu_flags(cpuinfo_path: Path = CPUINFO) -> frozenset[str]:
    """This machine's CPU flags; none where they cannot be read (not Linux, or /proc not mounted)."""
    try:
        return cpu_flags(cpuinfo_path.read_text())
    except OSError:
        return frozenset()


def cpu_has_native_bf16(cpuinfo_path: Path = CPUINFO) -> bool:
    """Whether this machine's CPU computes bfloat16 matrix products natively (AMX or AVX512-BF16).

    Unreadable flags are no evidence of bf16, so ``auto`` keeps float32.
    """
    return bool(machine_cpu_flags(cpuinfo_path) & CPU_BF16_FLAGS)


def cpu_has_amx(cpuinfo_path: Path = CPUINFO) -> bool:
    """Whether this machine's CPU has AMX tile units for bfloat16 (``amx_bf16``)."""
    return "amx_bf16" in machine_cpu_flags(cpuinfo_path)


def resolve_dtype(setting: str, device: str, cuda: Cuda | None = None, cpuinfo: Path = CPUINFO) -> Dtype:
    """The precision to load the weights in, on ``device`` ("cpu" or "cuda"), for a ``CHRONOS2_DTYPE`` setting.

    ``cuda`` is read only for ``auto`` on the GPU (its compute capability), so a CPU call never
    touches CUDA; ``cpuinfo`` is where the CPU's flags are read for ``auto`` on the CPU.
    """
    if setting not in DTYPE_SETTINGS:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if device == "cuda":
        if cuda is None:
            raise ValueError("resolving dtype auto on CUDA needs the device (cuda=...) to read its compute capability")
        return "bfloat16" if cuda.capability() >= CUDA_BF16_CAPABILITY else "float32"
    return "bfloat16" if cpu_has_native_bf16(cpuinfo) else "float32"
