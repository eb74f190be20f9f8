"""Sharing the GPU: the device decision, the PostgreSQL advisory lock, the OOM fallback and the `gpu` pool.

The only fake is ``FakeCuda``, standing in for the CUDA runtime (this machine has no GPU). The
lock is real PostgreSQL, the model is the real tiny Chronos-2, and the pool is read back from a
real Dagster instance built from the repository's dagster.yaml.
"""

import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import psycopg
import pytest
import torch
import yaml

from forecasting_pipeline.forecasting.device import (
    GIB,
    GPU_LOCK_KEY,
    GpuProcess,
    GpuSettings,
    advisory_lock,
    gpu_lock_key,
    lock_key_for,
    run_on_device,
)
from forecasting_pipeline.forecasting.runner import _MODEL_CACHE
from forecasting_pipeline.market.cadences import DAILY, HOURLY
from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.pools import GPU_POOL, ensure_gpu_pool_limit
from forecasting_pipeline.orchestration.resources import Chronos2Resource
from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS

REPO = Path(__file__).resolve().parents[1]
HORIZON = 10
CONTEXT = 64  # the daily_inputs fixture's length (conftest.py)
# Two GPUs as CUDA names them (torch.cuda.get_device_properties(i).uuid).
GPU_A = "5b9c3a1e-8f0d-4c55-9d2e-0a1b2c3d4e5f"
GPU_B = "e07d21c4-13aa-4b6f-8e90-77f1a2b3c4d5"


class FakeCuda:
    """A CUDA device that is only numbers, for machines without one; optionally OOMs on its first run."""

    def __init__(
        self, available: bool = True, free_gb: float = 8.0, oom_on_first_run: bool = False, uuid: str | None = None
    ) -> None:
        self.available = available
        self.device_uuid = uuid
        self.free_bytes = int(free_gb * GIB)
        self.oom_on_first_run = oom_on_first_run
        self.runs = 0
        self.emptied = 0

    def is_available(self) -> bool:
        return self.available

    def uuid(self) -> str | None:
        return self.device_uuid

    def mem_get_info(self) -> tuple[int, int]:
        return self.free_bytes, 8 * GIB

    def processes(self) -> list[GpuProcess] | None:
        return [GpuProcess(pid=4242, used_memory_bytes=3 * GIB)]

    def reset_peak_memory_stats(self) -> None:
        pass

    def max_memory_allocated(self) -> int:
        return 700 * 1024**2

    def empty_cache(self) -> None:
        self.emptied += 1

    def run(self, work):
        self.runs += 1
        if self.oom_on_first_run and self.runs == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return work()


def _lock_is_free(url: str) -> bool:
    """Whether another session can take the GPU lock right now (it releases it again at once)."""
    with psycopg.connect(url, autocommit=True) as other:
        taken = other.execute("SELECT pg_try_advisory_lock(%s)", (GPU_LOCK_KEY,)).fetchone()[0]
        if taken:
            other.execute("SELECT pg_advisory_unlock(%s)", (GPU_LOCK_KEY,))
        return taken


@pytest.fixture
def held_gpu_lock(empty_database_url):
    """Another session (Kronos, say) holding the GPU lock in the test database."""
    with psycopg.connect(empty_database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (GPU_LOCK_KEY,))
        yield empty_database_url


def test_when_settings_name_an_unknown_device_then_they_are_refused():
    with pytest.raises(ValueError, match="device must be 'auto', 'cuda' or 'cpu', got 'tpu'"):
        GpuSettings(device="tpu")


def test_when_cuda_is_absent_then_auto_runs_the_real_model_on_cpu_without_a_fallback(tiny_checkpoint, daily_inputs):
    resource = Chronos2Resource(model=str(tiny_checkpoint), device="auto")

    done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT, cuda=FakeCuda(False))
    quantiles, loaded, _timings, record = done.quantiles, done.model, done.timings, done.device_run

    assert quantiles.shape == (23, HORIZON, 3)
    assert loaded.device == "cpu"
    assert (record.device, record.fell_back, record.reason) == ("cpu", False, "CUDA is not available")
    assert record.peak_gpu_memory_bytes is None
    assert record.metadata()["device_used"] == "cpu"


def test_when_cuda_is_requested_but_absent_then_the_run_falls_back_to_cpu():
    _result, record = run_on_device(lambda device: device, GpuSettings(device="cuda"), cuda=FakeCuda(False))

    assert (record.device, record.fell_back, record.reason) == ("cpu", True, "CUDA is not available")


def test_when_device_is_cpu_then_cuda_is_never_consulted():
    cuda = FakeCuda(True)

    result, record = run_on_device(lambda device: device, GpuSettings(device="cpu"), cuda=cuda)

    assert (result, record.device, record.fell_back, record.reason) == ("cpu", "cpu", False, "device=cpu configured")
    assert cuda.runs == 0


def test_when_too_little_gpu_memory_is_free_then_auto_falls_back_to_cpu_and_releases_the_lock(empty_database_url):
    cuda = FakeCuda(True, free_gb=0.5)
    devices = []

    def work(device):
        devices.append((device, _lock_is_free(empty_database_url)))
        return device

    _result, record = run_on_device(
        work, GpuSettings(device="auto", min_free_memory_gb=1.5), database_url=empty_database_url, cuda=cuda
    )

    assert devices == [("cpu", True)]
    assert (record.device, record.fell_back) == ("cpu", True)
    assert record.reason == "0.50 GiB free on the GPU, below min_free_memory_gb=1.5"
    assert record.free_gpu_memory_bytes == int(0.5 * GIB)
    assert cuda.runs == 0


def test_when_device_is_cuda_then_the_free_memory_test_is_skipped(empty_database_url):
    cuda = FakeCuda(True, free_gb=0.5)

    result, record = run_on_device(
        lambda device: device, GpuSettings(device="cuda"), database_url=empty_database_url, cuda=cuda
    )

    assert (result, record.device, record.fell_back) == ("cuda", "cuda", False)
    assert record.peak_gpu_memory_bytes == 700 * 1024**2


def test_when_the_gpu_is_free_then_the_lock_is_held_during_the_cuda_work_and_released_after(empty_database_url):
    cuda = FakeCuda(True, free_gb=6.0)
    seen = []

    def work(device):
        seen.append((device, _lock_is_free(empty_database_url)))
        return device

    _result, record = run_on_device(work, GpuSettings(device="auto"), database_url=empty_database_url, cuda=cuda)

    assert seen == [("cuda", False)]
    assert _lock_is_free(empty_database_url)
    assert (record.device, record.fell_back, record.reason) == ("cuda", False, "6.00 GiB free on the GPU")
    assert record.metadata()["peak_gpu_memory_mb"] == 700.0
    assert record.metadata()["other_gpu_processes"] == 1


def test_when_one_connection_holds_the_key_then_another_gets_it_only_after_release(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (GPU_LOCK_KEY,))
        with advisory_lock(empty_database_url, GPU_LOCK_KEY, timeout_s=0.3, poll_s=0.1) as taken:
            assert taken is False
        holder.execute("SELECT pg_advisory_unlock(%s)", (GPU_LOCK_KEY,))
        with advisory_lock(empty_database_url, GPU_LOCK_KEY, timeout_s=0.3, poll_s=0.1) as taken:
            assert taken is True
            assert holder.execute("SELECT pg_try_advisory_lock(%s)", (GPU_LOCK_KEY,)).fetchone()[0] is False
    assert _lock_is_free(empty_database_url)


def test_when_another_connection_holds_the_gpu_lock_then_the_resource_runs_on_cpu_after_the_timeout(
    tiny_checkpoint, daily_inputs, held_gpu_lock
):
    cuda = FakeCuda(True, free_gb=8.0)
    resource = Chronos2Resource(
        model=str(tiny_checkpoint), device="auto", lock_timeout_s=0.5, lock_database_url=held_gpu_lock
    )

    done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)
    quantiles, loaded, _timings, record = done.quantiles, done.model, done.timings, done.device_run

    assert quantiles.shape == (23, HORIZON, 3)
    assert loaded.device == "cpu"
    assert (record.device, record.fell_back) == ("cpu", True)
    assert record.reason == f"GPU lock {GPU_LOCK_KEY} busy for 0.5s"
    assert record.lock_wait_seconds >= 0.5
    assert cuda.runs == 0


def test_when_two_gpus_are_used_then_they_have_two_lock_keys_and_one_gpu_has_one():
    per_gpu, shared = GpuSettings(lock_scope="per-gpu"), GpuSettings()
    two_gpus = [FakeCuda(uuid=GPU_A), FakeCuda(uuid=GPU_B)]
    # Two processes on one GPU, one reading CUDA's spelling of its UUID and one NVML's.
    one_gpu = [FakeCuda(uuid=GPU_A), FakeCuda(uuid=f"GPU-{GPU_A.upper()}")]

    assert len({lock_key_for(per_gpu, cuda) for cuda in two_gpus}) == 2
    assert {lock_key_for(per_gpu, cuda) for cuda in one_gpu} == {gpu_lock_key(GPU_A)}
    assert GPU_LOCK_KEY not in {gpu_lock_key(GPU_A), gpu_lock_key(GPU_B)}
    # Kronos's box keeps the documented key, whatever the card.
    assert {lock_key_for(shared, cuda) for cuda in two_gpus} == {GPU_LOCK_KEY}


def test_when_a_gpu_has_no_readable_uuid_then_the_per_gpu_lock_takes_the_shared_key():
    assert lock_key_for(GpuSettings(lock_scope="per-gpu"), FakeCuda(uuid=None)) == GPU_LOCK_KEY


def test_when_per_gpu_locks_are_held_then_a_second_user_of_the_same_gpu_waits_and_of_another_gpu_does_not(
    empty_database_url,
):
    settings = GpuSettings(device="auto", lock_scope="per-gpu", lock_timeout_s=0.3, lock_poll_s=0.1)
    inside, release, held = threading.Event(), threading.Event(), []

    def hold(device):
        inside.set()
        release.wait(30)
        return device

    holder = threading.Thread(target=lambda: held.append(
        run_on_device(hold, settings, database_url=empty_database_url, cuda=FakeCuda(uuid=GPU_A))
    ))
    holder.start()
    try:
        assert inside.wait(30)
        _result, same_gpu = run_on_device(lambda d: d, settings, database_url=empty_database_url, cuda=FakeCuda(uuid=GPU_A))
        _result, other_gpu = run_on_device(lambda d: d, settings, database_url=empty_database_url, cuda=FakeCuda(uuid=GPU_B))
    finally:
        release.set()
        holder.join()

    assert (same_gpu.device, same_gpu.fell_back) == ("cpu", True)
    assert same_gpu.reason == f"GPU lock {gpu_lock_key(GPU_A)} busy for 0.3s"
    assert (other_gpu.device, other_gpu.fell_back) == ("cuda", False)
    assert other_gpu.metadata()["gpu_lock_key"] == str(gpu_lock_key(GPU_B))
    assert held[0][1].device == "cuda"


def test_when_the_lock_database_is_unreachable_then_auto_runs_on_cpu():
    url = "postgresql://nobody@127.0.0.1:1/nowhere"

    result, record = run_on_device(lambda device: device, GpuSettings(), database_url=url, cuda=FakeCuda(True))

    assert (result, record.fell_back, record.reason) == ("cpu", True, "GPU lock database 127.0.0.1:1/nowhere unreachable")


def test_when_cuda_runs_out_of_memory_then_the_same_batch_runs_on_cpu_and_the_run_succeeds(
    tiny_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(True, free_gb=8.0, oom_on_first_run=True)
    resource = Chronos2Resource(model=str(tiny_checkpoint), device="auto", lock_database_url=empty_database_url)
    cpu_only = Chronos2Resource(model=str(tiny_checkpoint), device="cpu")

    done = resource.runner().predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)
    quantiles, loaded, _timings, record = done.quantiles, done.model, done.timings, done.device_run
    expected = cpu_only.runner().predict(daily_inputs, HORIZON, CONTEXT).quantiles

    assert loaded.device == "cpu"
    np.testing.assert_array_equal(quantiles, expected)
    assert (record.device, record.fell_back) == ("cpu", True)
    assert record.reason == "CUDA out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert record.peak_gpu_memory_bytes == 700 * 1024**2
    assert cuda.emptied == 1
    assert not any(key[2] == "cuda" for key in _MODEL_CACHE)
    assert _lock_is_free(empty_database_url)


def test_when_a_window_is_forecast_then_its_metadata_records_the_device(resources, instance, database_url):
    resources = {**resources, "chronos2": Chronos2Resource(
        model=resources["chronos2"].model, device="cpu", lock_database_url=database_url
    )}

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key="2025-06-02", resources=resources, instance=instance)

    metadata = result.asset_materializations_for_node("chronos2_forecasts_1d")[0].metadata
    assert metadata["device_used"].value == "cpu"
    assert metadata["device_requested"].value == "cpu"
    assert metadata["device_fell_back"].value is False
    assert metadata["device_reason"].value == "device=cpu configured"
    assert metadata["device_wall_seconds"].value > 0
    assert "peak_gpu_memory_mb" not in metadata


@pytest.mark.parametrize("cadence", [DAILY, HOURLY], ids=lambda c: c.name)
def test_when_definitions_load_then_every_asset_that_runs_the_model_is_in_the_gpu_pool(cadence):
    from forecasting_pipeline.definitions import defs

    model_assets = [
        a for a in defs.resolve_asset_graph().assets_defs
        if "chronos2" in a.required_resource_keys and any(k.path[-1].endswith(f"_{cadence.name}") for k in a.keys)
    ]

    assert [k.path[-1] for a in model_assets for k in a.keys] == [f"chronos2_forecasts_{cadence.name}"]
    assert {a.op.pool for a in model_assets} == {GPU_POOL}


@pytest.fixture
def project_instance(empty_database_url, tmp_path, monkeypatch):
    """``project_instance(default_limit)``: DAGSTER_HOME with the project's dagster.yaml on PostgreSQL,
    its default pool limit replaced (None: no concurrency section at all)."""

    def make(default_limit: int | None = 1) -> Path:
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        if default_limit is None:
            del config["concurrency"]
        else:
            config["concurrency"]["pools"]["default_limit"] = default_limit
        (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
        monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(empty_database_url))
        return tmp_path

    return make


def explicit_limits(instance: dg.DagsterInstance) -> dict[str, int]:
    return {p.name: p.limit for p in instance.event_log_storage.get_pool_limits() if not p.from_default}


def test_when_the_project_instance_is_set_up_then_its_default_gives_the_gpu_pool_one_slot(project_instance):
    project_instance(1)

    with dg.DagsterInstance.get() as instance:
        assert ensure_gpu_pool_limit(instance) == (1, "the instance's default pool limit")
        assert explicit_limits(instance) == {}
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60


def test_when_the_deployment_sets_a_default_of_two_then_setting_up_the_instance_keeps_two(project_instance):
    project_instance(2)  # the Helm chart's concurrency.pools.defaultLimit

    done = subprocess.run([sys.executable, "-m", "forecasting_pipeline.cli", "setup-instance"],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert "pool 'gpu' limited to 2 (the instance's default pool limit)" in done.stdout
    with dg.DagsterInstance.get() as instance:
        assert explicit_limits(instance) == {}


def test_when_an_operator_set_the_gpu_limit_then_setting_up_the_instance_keeps_it(project_instance):
    project_instance(1)
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 3)

        assert ensure_gpu_pool_limit(instance) == (3, "set on the instance")
        assert explicit_limits(instance) == {GPU_POOL: 3}


def test_when_the_instance_sets_no_limit_then_the_gpu_pool_gets_one_slot(project_instance):
    project_instance(None)

    with dg.DagsterInstance.get() as instance:
        assert ensure_gpu_pool_limit(instance) == (1, "set now: the instance had no limit for it")
        assert explicit_limits(instance) == {GPU_POOL: 1}
        assert ensure_gpu_pool_limit(instance) == (1, "set on the instance")
