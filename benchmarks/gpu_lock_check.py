"""On a CUDA machine: the per-GPU lock keys (CHRONOS2_GPU_LOCK=per-gpu) from the real devices.

Checks what the tests can only fake: that torch gives every visible GPU a UUID, that the UUIDs (and
so the advisory-lock keys) differ between GPUs, and, when nvidia-ml-py is installed, that NVML names
the same devices, so both spellings give the same keys (not with MIG slices: NVML lists their
parent GPUs). With DATABASE_URL set it also holds the lock of GPU 0 and tries GPU 0's and (if
present) GPU 1's from a second connection.

    python benchmarks/gpu_lock_check.py [--json FILE]

Without CUDA it prints "no CUDA" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecasting_pipeline.forecasting.device import (  # noqa: E402
    GPU_LOCK_KEY,
    GpuSettings,
    TorchCuda,
    advisory_lock,
    gpu_lock_key,
    lock_key_for,
)


def nvml_uuids() -> list[str] | None:
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        uuids = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
        return uuids
    finally:
        pynvml.nvmlShutdown()


def lock_trials(url: str, keys: list[int]) -> dict[str, bool]:
    """Hold the first key, then try each key from another connection: True where it was free."""
    out = {}
    with advisory_lock(url, keys[0], timeout_s=1.0) as held:
        assert held, "could not take the first GPU's lock at all"
        for i, key in enumerate(keys[:2]):
            with advisory_lock(url, key, timeout_s=0.5, poll_s=0.1) as taken:
                out[f"gpu{i}_free_while_gpu0_held"] = taken
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here too")
    # The check itself takes seconds: --smoke is the same run, accepted so every benchmark answers to it.
    parser.add_argument("--smoke", action="store_true", help="the same check (it takes seconds)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA")
        return 0
    per_gpu = GpuSettings(lock_scope="per-gpu")
    devices = [TorchCuda(i) for i in range(torch.cuda.device_count())]
    result: dict[str, object] = {
        "torch": torch.__version__,
        "devices": [
            {"index": d.index, "name": torch.cuda.get_device_name(d.index), "uuid": d.uuid(),
             "lock_key": lock_key_for(per_gpu, d), "shared_key": lock_key_for(GpuSettings(), d)}
            for d in devices
        ],
    }
    keys = [d["lock_key"] for d in result["devices"]]
    result["distinct_keys"] = len(set(keys)) == len(keys) and GPU_LOCK_KEY not in keys
    nvml = nvml_uuids()
    if nvml is not None:
        result["nvml_uuids"] = nvml
        result["nvml_gives_same_keys"] = sorted(gpu_lock_key(u) for u in nvml) == sorted(keys)
    if os.environ.get("DATABASE_URL"):
        result["lock_trials"] = lock_trials(os.environ["DATABASE_URL"], keys)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = result["distinct_keys"] and result.get("nvml_gives_same_keys", True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
