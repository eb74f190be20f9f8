"""Sharing the GPU: the device decision, the PostgreSQL advisory lock, the OOM fallback and the `gpu` pool.

The only fake is ``FakeCuda``, standing in for the CUDA runtime (this machine has no GPU). The
lock is real PostgreSQL, the model is the real tiny Chronos-2, and the pool is read back from a
real Dagster instance built from the repository's dagster.yaml.
"""

import shutil
import subprocess
import sys
import threading
from dataclasses import replace
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
from forecasting_pipeline.forecasting.runner import _MODEL_CACHE, Chronos2Runner
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
    """A CUDA device that is only numbers, for machines without one.

    Its "device memory" is host memory: ``to_device`` returns a copy of the tensor, so the real
    model runs through the GPU path on the CPU. It counts the calls that on a real device create
    a CUDA context (``context_calls``), keeps the device copies it made (``held_by``), and can fail: ``fail_run`` is raised by the first ``run``, ``fail_copy_at`` makes that many-th
    ``to_device`` raise torch's out-of-memory error.
    """

    def __init__(
        self, available: bool = True, free_gb: float = 8.0, oom_on_first_run: bool = False, uuid: str | None = None,
        capability: tuple[int, int] = (9, 0), fail_run: BaseException | None = None, fail_copy_at: int | None = None,
    ) -> None:
        self.available = available
        self.device_uuid = uuid
        self.free_bytes = int(free_gb * GIB)
        self.fail_run = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") \
            if oom_on_first_run else fail_run
        self.cc = capability
        self.fail_copy_at = fail_copy_at
        self.runs = 0
        self.emptied = 0
        self.pinned = 0
        self.copied = 0
        self.context_calls = 0
        self.device_copies: list[torch.Tensor] = []

    def is_available(self) -> bool:
        return self.available

    def uuid(self) -> str | None:
        return self.device_uuid

    def mem_get_info(self) -> tuple[int, int]:
        return self.free_bytes, 8 * GIB  # as NVML reads it: no context

    def capability(self) -> tuple[int, int]:
        return self.cc

    def processes(self) -> list[GpuProcess] | None:
        return [GpuProcess(pid=4242, used_memory_bytes=3 * GIB)]

    def reset_peak_memory_stats(self) -> None:
        self.context_calls += 1

    def max_memory_allocated(self) -> int:
        self.context_calls += 1
        return 700 * 1024**2

    def empty_cache(self) -> None:
        self.context_calls += 1
        self.emptied += 1

    def pin_memory(self, tensor):
        self.context_calls += 1
        self.pinned += 1
        return tensor.clone()

    def to_device(self, tensor):
        self.context_calls += 1
        self.copied += 1
        if self.copied == self.fail_copy_at:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 MiB")
        copy = tensor.clone()
        self.device_copies.append(copy)  # held, so no other tensor takes its address
        return copy

    def held_by(self, tensors) -> int:
        """How many of ``tensors`` point at a device copy this fake made."""
        on_device = {c.data_ptr() for c in self.device_copies}
        return sum(t.data_ptr() in on_device for t in tensors)

    def run(self, work):
        self.context_calls += 1
        self.runs += 1
        result = work()
        # As torch.cuda.synchronize surfaces the asynchronous kernels' errors: after the work.
        if self.fail_run is not None and self.runs == 1:
            raise self.fail_run
        return result


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
    assert record.reason == "GPU allocation failed: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert record.peak_gpu_memory_bytes == 700 * 1024**2
    assert cuda.emptied == 1
    assert not any(host.on_device for _loaded, host in _MODEL_CACHE.values())
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

    # The chain's forecasts, and fine-tuning and the challenger's shadow forecasts beside them.
    assert sorted(k.path[-1] for a in model_assets for k in a.keys) == [
        f"chronos2_challenger_forecasts_{cadence.name}", f"chronos2_finetuned_{cadence.name}",
        f"chronos2_forecasts_{cadence.name}"]
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


def _gpu_runner(checkpoint: Path, database_url: str, **settings) -> Chronos2Runner:
    return Chronos2Runner(model=str(checkpoint), device="auto", dtype="float32", lock_database_url=database_url, **settings)


def _host(checkpoint: Path, dtype: str = "float32"):
    """The host copy of ``checkpoint`` in this process, and its tensors (parameters and buffers)."""
    loaded, host = _MODEL_CACHE[(str(checkpoint), None, dtype)]
    return host, [*loaded.pipeline.model.parameters(), *loaded.pipeline.model.buffers()]


@pytest.fixture
def own_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """The tiny checkpoint under a path of its own, so that its host copy in this process starts fresh."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "chronos2-tiny"))


def test_when_batches_run_on_the_gpu_then_the_checkpoint_loads_once_and_its_pinned_weights_are_lent_per_call(
    own_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(True)
    runner = _gpu_runner(own_checkpoint, empty_database_url)
    expected = replace(runner, device="cpu").predict(daily_inputs, HORIZON, CONTEXT).quantiles

    first = runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)
    host, tensors = _host(own_checkpoint)
    pointers = [t.data_ptr() for t in tensors]
    second = runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)

    assert [(d.device_run.device, d.model.device) for d in (first, second)] == [("cuda", "cuda")] * 2
    np.testing.assert_array_equal(first.quantiles, expected)
    np.testing.assert_array_equal(second.quantiles, expected)
    assert [key for key in _MODEL_CACHE if key[0] == str(own_checkpoint)] == [(str(own_checkpoint), None, "float32")]
    assert (cuda.pinned, cuda.copied) == (len(tensors), 2 * len(tensors))
    assert host.pinned and not host.on_device
    assert [t.data_ptr() for t in tensors] == pointers
    assert cuda.held_by(tensors) == 0
    assert _lock_is_free(empty_database_url)


def test_when_the_weights_are_resident_then_later_gpu_calls_copy_nothing_and_a_cpu_call_takes_them_back(
    own_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(True)
    runner = _gpu_runner(own_checkpoint, empty_database_url, gpu_resident=True)

    runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)
    runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)
    host, tensors = _host(own_checkpoint)
    resident = (cuda.copied, cuda.held_by(tensors), host.on_device, _lock_is_free(empty_database_url))
    on_cpu = replace(runner, device="cpu").predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)

    assert resident == (len(tensors), len(tensors), True, True)
    assert on_cpu.device_run.device == "cpu"
    assert (host.on_device, cuda.held_by(tensors)) == (False, 0)


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    torch.AcceleratorError("CUDA error: out of memory"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
], ids=["torch-oom", "cuda-runtime", "cublas", "cudnn"])
def test_when_the_gpu_cannot_allocate_then_the_batch_runs_on_the_cpu_with_the_weights_back_on_the_host(
    error, own_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(True, fail_run=error)
    runner = _gpu_runner(own_checkpoint, empty_database_url)

    done = runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)
    expected = replace(runner, device="cpu").predict(daily_inputs, HORIZON, CONTEXT).quantiles

    np.testing.assert_array_equal(done.quantiles, expected)
    assert (done.device_run.device, done.device_run.fell_back, done.model.device) == ("cpu", True, "cpu")
    assert done.device_run.reason == f"GPU allocation failed: {str(error).splitlines()[0]}"
    host, tensors = _host(own_checkpoint)
    assert (host.on_device, cuda.held_by(tensors), cuda.emptied) == (False, 0, 1)
    assert _lock_is_free(empty_database_url)


def test_when_copying_the_weights_to_the_gpu_fails_half_way_then_every_tensor_is_back_on_the_host(
    own_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(True, fail_copy_at=5)
    runner = _gpu_runner(own_checkpoint, empty_database_url)
    expected = replace(runner, device="cpu").predict(daily_inputs, HORIZON, CONTEXT).quantiles
    host, tensors = _host(own_checkpoint)

    done = runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)

    assert (done.device_run.device, done.device_run.reason) == ("cpu", "GPU allocation failed: CUDA out of memory. Tried to allocate 9.00 MiB")
    np.testing.assert_array_equal(done.quantiles, expected)
    assert (host.on_device, cuda.held_by(tensors)) == (False, 0)


def test_when_a_gpu_call_fails_for_another_reason_then_the_error_propagates_after_the_weights_go_back(
    own_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(True, fail_run=RuntimeError("CUDA error: an illegal memory access was encountered"))
    runner = _gpu_runner(own_checkpoint, empty_database_url, gpu_resident=True)

    with pytest.raises(RuntimeError, match="an illegal memory access"):
        runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)

    host, tensors = _host(own_checkpoint)
    assert (host.on_device, cuda.held_by(tensors)) == (False, 0)
    assert _lock_is_free(empty_database_url)


@pytest.mark.parametrize("case", ["device cpu", "no CUDA", "GPU lock busy", "too little free memory"])
def test_when_a_call_goes_to_the_cpu_then_nothing_that_creates_a_cuda_context_is_called(
    case, tiny_checkpoint, daily_inputs, empty_database_url
):
    cuda = FakeCuda(available=case != "no CUDA", free_gb=0.5 if case == "too little free memory" else 8.0)
    runner = Chronos2Runner(
        model=str(tiny_checkpoint), device="cpu" if case == "device cpu" else "auto",
        lock_database_url=empty_database_url, lock_timeout_s=0.2,
    )

    with psycopg.connect(empty_database_url, autocommit=True) as other:
        if case == "GPU lock busy":
            other.execute("SELECT pg_advisory_lock(%s)", (GPU_LOCK_KEY,))
        done = runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=cuda)

    assert done.device_run.device == "cpu"
    assert cuda.context_calls == 0


@pytest.mark.parametrize(("capability", "dtype"), [((8, 0), "bfloat16"), ((7, 5), "float32")])
def test_when_dtype_is_auto_then_a_gpu_call_runs_in_bfloat16_from_compute_capability_8(
    capability, dtype, tiny_checkpoint, daily_inputs, empty_database_url
):
    runner = replace(_gpu_runner(tiny_checkpoint, empty_database_url), dtype="auto")

    done = runner.predict(daily_inputs, HORIZON, CONTEXT, cuda=FakeCuda(True, capability=capability))

    assert (done.device_run.device, done.model.dtype) == ("cuda", dtype)
    assert f" {dtype} RANDOM-WEIGHTS" in done.model.version
