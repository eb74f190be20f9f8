"""Where Chronos-2 inference runs, and how it shares one GPU with Kronos.

This module owns the device decision and its record:

- ``device="auto"`` runs on CUDA only when CUDA is available, the cross-process GPU lock is free
  within ``lock_timeout_s``, and the GPU then has at least ``min_free_memory_gb`` free
  (``torch.cuda.mem_get_info``, which counts every process on the device, Kronos included).
  ``device="cuda"`` skips the free-memory test but still takes the lock; ``device="cpu"`` never
  touches CUDA.
- The cross-process lock is a PostgreSQL session-level advisory lock, held on a connection of its
  own for as long as the GPU is in use. With ``lock_scope="shared"`` (the default) its key is
  ``GPU_LOCK_KEY``: any other GPU user (Kronos) that takes the same key in the same database is
  serialised with us; docs/gpu-sharing.md gives the SQL. With ``lock_scope="per-gpu"`` the key is derived
  from the UUID of the device the work runs on (``gpu_lock_key``), so users of different GPUs (pods
  on several GPU nodes) do not wait for each other, while two users of one GPU still do.
- A GPU allocation failure during the work (torch's out-of-memory error, or a cuBLAS/cuDNN handle
  or workspace that could not be allocated, which torch raises as a plain ``RuntimeError``) frees
  GPU memory, logs a warning and reruns the same work on the CPU: a run never fails because the GPU
  was full. ``is_gpu_allocation_failure`` says which errors those are.
- A call that goes to the CPU never creates a CUDA context (which alone holds hundreds of MB of the
  card): it asks only whether CUDA exists, the GPU's UUID, and free memory through NVML. Without
  ``nvidia-ml-py`` the free-memory test of ``device="auto"`` reads ``torch.cuda.mem_get_info``,
  which does create the context.

CUDA is reached only through the small ``Cuda`` interface (``TorchCuda`` is the real one), so the
decision can be tested on machines without a GPU.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

Device = Literal["auto", "cuda", "cpu"]
LockScope = Literal["shared", "per-gpu"]
# How one piece of work treats the GPU lock: ``wait`` up to ``lock_timeout_s`` (a run's batch),
# ``try`` it once and take the CPU when it is busy (on-demand work, which must not wait), or
# ``held``: the caller holds it already (``GpuLease``), and the CUDA copy of the model stays until
# the caller gives the lease back.
LockMode = Literal["wait", "try", "held"]

# The advisory-lock key every GPU user on the shared card takes before using it: the ASCII bytes
# of "GPU_LOCK" read as a big-endian bigint (0x4750555F4C4F434B). Documented in docs/gpu-sharing.md.
GPU_LOCK_KEY = 5138701042620253003
# Hashed in front of a GPU's UUID, so per-GPU keys are apart from any other advisory-lock user's keys.
PER_GPU_KEY_NAMESPACE = b"forecasting_pipeline GPU lock "

GIB = 1024**3

# GPU allocation failures that torch raises as a plain RuntimeError (or its AcceleratorError
# subclass) rather than OutOfMemoryError: the CUDA runtime's own "out of memory" (a context or a
# pinned buffer it could not make), and cuBLAS, cuDNN, cuFFT, cuSOLVER or cuSPARSE failing to
# allocate a handle or workspace. cuBLAS reports a handle it could not create for want of memory
# as NOT_INITIALIZED. Rerunning on the CPU is safe whatever the cause.
_GPU_ALLOCATION_FAILURE = re.compile(r"out of memory|_ALLOC_FAILED|CUBLAS_STATUS_NOT_INITIALIZED", re.IGNORECASE)


def is_gpu_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` says the GPU could not allocate memory (the CPU fallback's trigger)."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and bool(_GPU_ALLOCATION_FAILURE.search(str(error)))


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0][:200] if text else type(error).__name__


@dataclass(frozen=True)
class GpuSettings:
    """How to choose the device (see the module docstring)."""

    device: Device = "auto"
    min_free_memory_gb: float = 1.5
    lock_timeout_s: float = 60.0
    lock_poll_s: float = 0.5
    lock_key: int = GPU_LOCK_KEY
    lock_scope: LockScope = "shared"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {self.device!r}")
        if self.lock_scope not in ("shared", "per-gpu"):
            raise ValueError(f"lock_scope must be 'shared' or 'per-gpu', got {self.lock_scope!r}")
        if self.min_free_memory_gb < 0 or self.lock_timeout_s < 0 or self.lock_poll_s <= 0:
            raise ValueError(
                f"min_free_memory_gb and lock_timeout_s must be >= 0 and lock_poll_s > 0, got "
                f"{self.min_free_memory_gb}, {self.lock_timeout_s}, {self.lock_poll_s}"
            )


@dataclass(frozen=True)
class GpuProcess:
    """Another process on the GPU, as NVML reports it."""

    pid: int
    used_memory_bytes: int | None


class Cuda(Protocol):
    """The CUDA readings and calls the device decision needs."""

    def is_available(self) -> bool: ...

    def uuid(self) -> str | None:
        """The UUID of the device the work runs on, or None when it cannot be read."""
        ...

    def mem_get_info(self) -> tuple[int, int]:
        """Free and total device memory in bytes, over all processes (without a CUDA context where NVML answers)."""
        ...

    def capability(self) -> tuple[int, int]:
        """The device's compute capability, (major, minor)."""
        ...

    def pin_memory(self, tensor):
        """A page-locked host copy of a CPU tensor, which the GPU reads at full bus speed."""
        ...

    def to_device(self, tensor):
        """A copy of a host tensor on the device (asynchronous from pinned memory)."""
        ...

    def processes(self) -> list[GpuProcess] | None:
        """Compute processes on the device (NVML), or None when NVML is not installed."""
        ...

    def reset_peak_memory_stats(self) -> None: ...

    def max_memory_allocated(self) -> int: ...

    def empty_cache(self) -> None: ...

    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` that uses the device and wait for the device to finish it."""
        ...


class TorchCuda:
    """The real ``Cuda``: torch's CUDA runtime, plus NVML when ``nvidia-ml-py`` is installed."""

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def is_available(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def uuid(self) -> str | None:
        import torch

        # CUDA's own identity of the device this process computes on: in a container given one GPU
        # (or one MIG slice) by Kubernetes it names that GPU, whatever its index on the node. NVML's
        # index order may differ from CUDA's, so NVML is not asked.
        uuid = getattr(torch.cuda.get_device_properties(self.index), "uuid", None)
        return None if uuid is None else str(uuid)

    def mem_get_info(self) -> tuple[int, int]:
        read = self._nvml_memory()
        if read is not None:
            return read
        import torch

        # cudaMemGetInfo creates this process's CUDA context: only without NVML.
        free, total = torch.cuda.mem_get_info(self.index)
        return int(free), int(total)

    def _nvml_memory(self) -> tuple[int, int] | None:
        """Free and total memory from NVML, found by the CUDA device's UUID (NVML's indices may differ)."""
        try:
            import pynvml
        except ImportError:
            return None
        uuid = self.uuid()
        if uuid is None:
            return None
        try:
            pynvml.nvmlInit()
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                return int(memory.free), int(memory.total)
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            logger.info("NVML could not read GPU memory: %s", exc)
            return None

    def capability(self) -> tuple[int, int]:
        import torch

        major, minor = torch.cuda.get_device_capability(self.index)
        return int(major), int(minor)

    def pin_memory(self, tensor):
        return tensor.pin_memory()

    def to_device(self, tensor):
        return tensor.to(f"cuda:{self.index}", non_blocking=True)

    def processes(self) -> list[GpuProcess] | None:
        try:
            import pynvml  # nvidia-ml-py, optional: it only adds who else is on the device
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
                return [
                    GpuProcess(p.pid, p.usedGpuMemory)
                    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                ]
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            logger.info("NVML could not list GPU processes: %s", exc)
            return None

    def reset_peak_memory_stats(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.index)

    def max_memory_allocated(self) -> int:
        import torch

        return int(torch.cuda.max_memory_allocated(self.index))

    def empty_cache(self) -> None:
        import torch

        torch.cuda.empty_cache()

    def run(self, work: Callable[[], T]) -> T:
        import torch

        result = work()
        # Kernels run asynchronously: wait here so an out-of-memory error surfaces inside the
        # fallback's reach and wall time is the real time.
        torch.cuda.synchronize(self.index)
        return result


@dataclass(frozen=True)
class DeviceRun:
    """Where one piece of inference ran, and why."""

    requested: Device
    device: Literal["cuda", "cpu"]
    fell_back: bool
    reason: str
    wall_seconds: float
    lock_wait_seconds: float | None = None
    peak_gpu_memory_bytes: int | None = None
    free_gpu_memory_bytes: int | None = None
    other_gpu_processes: list[GpuProcess] | None = field(default=None)
    # "this run", or the forecast service that ran it (service_client.py).
    model_process: str = "this run"
    lock_key: int | None = None

    def metadata(self) -> dict[str, object]:
        """Plain values for Dagster metadata; peak memory only when CUDA was used."""
        out: dict[str, object] = {
            "device_requested": self.requested,
            "device_used": self.device,
            "device_fell_back": self.fell_back,
            "device_reason": self.reason,
            "device_wall_seconds": round(self.wall_seconds, 3),
            "model_process": self.model_process,
        }
        if self.lock_wait_seconds is not None:
            out["gpu_lock_wait_seconds"] = round(self.lock_wait_seconds, 3)
        if self.peak_gpu_memory_bytes is not None:
            out["peak_gpu_memory_mb"] = round(self.peak_gpu_memory_bytes / 1024**2, 1)
        if self.free_gpu_memory_bytes is not None:
            out["free_gpu_memory_mb"] = round(self.free_gpu_memory_bytes / 1024**2, 1)
        if self.other_gpu_processes is not None:
            out["other_gpu_processes"] = len(self.other_gpu_processes)
        if self.lock_key is not None:
            out["gpu_lock_key"] = str(self.lock_key)
        return out

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DeviceRun:
        processes = data.get("other_gpu_processes")
        return cls(**{**data, "other_gpu_processes": None if processes is None else [GpuProcess(**p) for p in processes]})


def gpu_lock_key(uuid: str) -> int:
    """The advisory-lock key of one GPU, from its UUID: a signed 64-bit integer, as PostgreSQL wants.

    NVML writes UUIDs as ``GPU-<hex groups>``, CUDA without the prefix; both give the same key.
    """
    normal = uuid.strip().lower().removeprefix("gpu-")
    if not normal:
        raise ValueError("a GPU UUID is needed for its lock key, got an empty string")
    digest = hashlib.blake2b(PER_GPU_KEY_NAMESPACE + normal.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_key_for(settings: GpuSettings, cuda: Cuda) -> int:
    """The key to hold while using the device: the shared one, or the device's own (``lock_scope``).

    A per-GPU lock whose device has no readable UUID takes the shared key: it then waits for every
    other GPU user rather than for none.
    """
    if settings.lock_scope == "shared":
        return settings.lock_key
    uuid = cuda.uuid()
    if uuid is None:
        logger.warning("the GPU's UUID cannot be read; taking the shared GPU lock %d instead", settings.lock_key)
        return settings.lock_key
    return gpu_lock_key(uuid)


@contextmanager
def advisory_lock(database_url: str, key: int, timeout_s: float, poll_s: float = 0.5) -> Iterator[bool]:
    """Hold the session-level advisory lock ``key`` for the block; yield whether it was taken.

    Polls ``pg_try_advisory_lock`` until ``timeout_s`` rather than blocking in
    ``pg_advisory_lock``, so a GPU user that never lets go cannot stall us. The lock lives on a
    connection of its own (a session lock belongs to its connection; closing it releases the lock,
    so a crashed holder frees it too). Yields False, without raising, when the lock is busy.
    """
    # Imported here so that the GPU check (benchmarks/gpu_check.py) runs where only torch is installed.
    import psycopg

    from forecasting_pipeline.storage.database import connect

    conn = connect(database_url, attempts=1)
    conn.autocommit = True
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            taken = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
            if taken or time.monotonic() >= deadline:
                break
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        try:
            yield bool(taken)
        finally:
            if taken:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                except psycopg.Error:
                    # A broken connection has already lost the lock; closing below is enough.
                    logger.warning("could not unlock GPU lock %d explicitly; closing its connection", key)
    finally:
        conn.close()


@dataclass
class _Plan:
    device: Literal["cuda", "cpu"]
    fell_back: bool
    reason: str
    lock_wait_seconds: float | None = None
    free_bytes: int | None = None
    processes: list[GpuProcess] | None = None
    lock_key: int | None = None


def _plan(settings: GpuSettings, cuda: Cuda, database_url: str | None, stack: ExitStack, lock: LockMode) -> _Plan:
    """Decide the device; when it is CUDA, the GPU lock is held in ``stack`` (or by the caller, ``held``)."""
    if settings.device == "cpu":
        return _Plan("cpu", False, "device=cpu configured")
    if not cuda.is_available():
        # With auto, no CUDA at all is a plain decision; with cuda it is a fallback.
        return _Plan("cpu", settings.device == "cuda", "CUDA is not available")

    key = lock_key_for(settings, cuda)
    lock_wait = None
    if lock == "held":
        lock_wait = 0.0
    elif database_url is None:
        logger.warning("no database for the GPU lock: using the GPU without cross-process coordination")
        key = None
    else:
        from forecasting_pipeline.storage.database import (
            DatabaseUnavailableError,
            describe_database,
        )

        started = time.monotonic()
        timeout = 0.0 if lock == "try" else settings.lock_timeout_s
        try:
            taken = stack.enter_context(advisory_lock(database_url, key, timeout, settings.lock_poll_s))
        except DatabaseUnavailableError:
            return _Plan("cpu", True, f"GPU lock database {describe_database(database_url)} unreachable", lock_key=key)
        lock_wait = time.monotonic() - started
        if not taken:
            busy = "busy; on-demand work does not wait for it" if lock == "try" else f"busy for {timeout:g}s"
            return _Plan("cpu", True, f"GPU lock {key} {busy}", lock_wait, lock_key=key)

    try:
        free, _total = cuda.mem_get_info()
    except RuntimeError as exc:
        if not is_gpu_allocation_failure(exc):
            raise
        stack.close()
        return _Plan("cpu", True, f"GPU allocation failed: {_first_line(exc)}", lock_wait, lock_key=key)
    processes = cuda.processes()
    needed = int(settings.min_free_memory_gb * GIB)
    if settings.device == "auto" and free < needed:
        stack.close()  # give the lock back at once: we will not use the GPU
        return _Plan(
            "cpu", True,
            f"{free / GIB:.2f} GiB free on the GPU, below min_free_memory_gb={settings.min_free_memory_gb:g}",
            lock_wait, free, processes, key,
        )
    return _Plan("cuda", False, f"{free / GIB:.2f} GiB free on the GPU", lock_wait, free, processes, key)


def run_on_device(
    work: Callable[[str], T],
    settings: GpuSettings,
    *,
    database_url: str | None = None,
    cuda: Cuda | None = None,
    release_cuda: Callable[[], None] | None = None,
    lock: LockMode = "wait",
) -> tuple[T, DeviceRun]:
    """Run ``work(device)`` on the device the settings choose, falling back to the CPU when the GPU cannot allocate.

    Parameters
    ----------
    work
        Does the whole job on the given torch device (``"cuda"`` or ``"cpu"``): placing the model
        and predicting. It may be called twice (CUDA, then CPU after an allocation failure), so
        it must be safe to repeat.
    database_url
        The database of the GPU advisory lock; without it the GPU is used uncoordinated.
    release_cuda
        Drops this process's references to GPU tensors (cached model weights), so that the GPU
        memory is given back before the lock is; called after a CUDA attempt that raised. What a
        successful attempt keeps on the GPU is its owner's to give back (``runner``: unless resident,
        or under a ``held`` lock, whose holder releases it with the lock: ``GpuLease.release``).
    lock
        ``wait``, ``try`` or ``held`` (``LockMode``).

    Returns
    -------
    result, record
        What ``work`` returned and where it ran (peak GPU memory when CUDA ran to the end or failed to allocate).
    """
    cuda = cuda or TorchCuda()
    started = time.perf_counter()
    with ExitStack() as stack:
        plan = _plan(settings, cuda, database_url, stack, lock)
        peak = None
        if plan.device == "cuda":
            result, peak, failure = _run_on_cuda(work, cuda, release_cuda, keep=lock == "held")
            if failure is None:
                return result, _device_run(settings, plan, started, peak)
            logger.warning("GPU allocation failed (%s); retrying the same batch on the CPU", failure)
            plan = replace(plan, device="cpu", fell_back=True, reason=f"GPU allocation failed: {failure}")
        # The CPU does not need the GPU lock: release it before the (long) CPU work.
        stack.close()
        result = work("cpu")
    if plan.fell_back:
        logger.warning("running on the CPU instead of the GPU: %s", plan.reason)
    return result, _device_run(settings, plan, started, peak)


def _run_on_cuda(
    work: Callable[[str], T], cuda: Cuda, release_cuda: Callable[[], None] | None, keep: bool = False
) -> tuple[T | None, int | None, str | None]:
    """Run ``work("cuda")`` and give its GPU memory back, whatever happens (``keep``: only after a failure).

    Returns what ``work`` returned (None after an allocation failure), the peak GPU memory in
    bytes (None when it could not be read), and the allocation failure's first line, or None when
    there was none (``is_gpu_allocation_failure``). Any other error propagates, after the memory
    is given back.
    """
    result = None
    failure: str | None = None
    succeeded = False
    try:
        cuda.reset_peak_memory_stats()
        result = cuda.run(lambda: work("cuda"))
        succeeded = True
    except RuntimeError as exc:  # torch's OutOfMemoryError and AcceleratorError are RuntimeErrors
        if not is_gpu_allocation_failure(exc):
            raise
        failure = _first_line(exc)
    finally:
        # After the except block, so a failure's traceback frames (and their GPU tensors) are
        # gone; on any other error too, so no model stays on the GPU once the lock is released.
        peak = _peak_memory(cuda)
        if not succeeded:
            _give_back(cuda, release_cuda)
        elif not keep:
            # The weights went back to the host with the call (runner), unless resident: what the
            # call left in torch's cache goes back to the card, for the next holder of the lock.
            _give_back(cuda, None)
    return result, peak, failure


def _peak_memory(cuda: Cuda) -> int | None:
    try:
        return cuda.max_memory_allocated()
    except RuntimeError as exc:  # a context that could not even be created has no statistics
        logger.info("peak GPU memory not read: %s", _first_line(exc))
        return None


def _give_back(cuda: Cuda, release_cuda: Callable[[], None] | None) -> None:
    """Drop this process's GPU tensors (``release_cuda``), collect what referred to them, empty torch's cache."""
    if release_cuda is not None:
        release_cuda()
    gc.collect()
    cuda.empty_cache()


class GpuLease:
    """The GPU lock held across several model calls, so that a batch cut into chunks waits for it once.

    The forecast service takes one per run batch: ``acquire`` waits up to ``lock_timeout_s`` (on a
    thread of its own, so the wait holds no model call back), each chunk then runs with
    ``lock="held"`` and keeps the CUDA copy of the model, and ``release`` gives the memory back
    before the lock, as a single call would. ``needed`` is False where no lock applies (device=cpu,
    no CUDA, or no lock database): the chunks then decide per call as usual.
    """

    def __init__(
        self, settings: GpuSettings, database_url: str | None, cuda: Cuda | None = None,
        release_cuda: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.cuda = cuda or TorchCuda()
        self.release_cuda = release_cuda
        self._stack: ExitStack | None = None
        self.key: int | None = None
        self.wait_seconds: float | None = None

    @property
    def needed(self) -> bool:
        return self.settings.device != "cpu" and self.database_url is not None and self.cuda.is_available()

    def acquire(self) -> bool:
        """Wait for the lock; True once held (then ``release`` must follow), False when busy or unreachable."""
        from forecasting_pipeline.storage.database import DatabaseUnavailableError

        self.key = lock_key_for(self.settings, self.cuda)
        started = time.monotonic()
        stack = ExitStack()
        try:
            taken = stack.enter_context(
                advisory_lock(self.database_url, self.key, self.settings.lock_timeout_s, self.settings.lock_poll_s)
            )
        except DatabaseUnavailableError:
            taken = False
        self.wait_seconds = time.monotonic() - started
        if taken:
            self._stack = stack
        else:
            stack.close()
        return taken

    def release(self) -> None:
        """Give the CUDA copy of the model back, then the lock (a no-op when it is not held)."""
        if self._stack is None:
            return
        try:
            _give_back(self.cuda, self.release_cuda)
        finally:
            self._stack.close()
            self._stack = None


def _device_run(settings: GpuSettings, plan: _Plan, started: float, peak: int | None) -> DeviceRun:
    """The record of a run that followed ``plan`` and began at ``started`` (``time.perf_counter``)."""
    return DeviceRun(
        settings.device, plan.device, plan.fell_back, plan.reason, time.perf_counter() - started,
        plan.lock_wait_seconds, peak, plan.free_bytes, plan.processes, lock_key=plan.lock_key,
    )
