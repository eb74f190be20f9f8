"""The garbage-collector tuning of run processes: imports' objects frozen, the collector always left as found."""

import gc
import subprocess
import sys

import pytest

from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.heap import imports_without_collection


def test_when_the_definitions_load_then_their_imports_are_frozen_and_the_collector_is_on():
    code = "import gc, forecasting_pipeline.definitions; print(gc.isenabled(), gc.get_freeze_count())"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)

    enabled, frozen = done.stdout.split()
    assert enabled == "True"
    # Dagster, polars, pandas and exchange_calendars leave a few hundred thousand objects.
    assert int(frozen) > 100_000


def test_when_an_import_fails_inside_the_block_then_the_collector_is_switched_back_on():
    with pytest.raises(ModuleNotFoundError):
        with imports_without_collection():
            assert not gc.isenabled()
            import forecasting_pipeline_no_such_module  # noqa: F401

    assert gc.isenabled()


def test_when_the_collector_was_off_before_the_block_then_it_stays_off():
    gc.disable()
    try:
        with imports_without_collection():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_when_objects_are_created_after_the_block_then_their_cycles_are_still_collected():
    with imports_without_collection():
        kept = [object() for _ in range(10)]
    frozen = gc.get_freeze_count()
    cycle = []
    cycle.append(cycle)
    del cycle

    # Nothing created after the block is frozen; frozen objects freed meanwhile (reference counting,
    # other threads) may lower the count.
    assert len(kept) <= gc.get_freeze_count() <= frozen
    assert gc.collect() >= 1


def test_when_a_long_lived_process_reloads_the_model_then_nothing_more_is_frozen(tiny_checkpoint):
    runner = Chronos2Runner(model=str(tiny_checkpoint), device="cpu")
    runner.load("cpu")
    frozen_after_first_load = gc.get_freeze_count()

    for _ in range(3):
        runner.release("cpu")
        runner.load("cpu")

    # Frozen objects can still be freed by reference counting; none are added.
    assert gc.get_freeze_count() <= frozen_after_first_load
