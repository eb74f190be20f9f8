"""The compiled model: which CPU calls run compiled, that they forecast what the eager model does, and the fallback.

Compiling fuses the element-wise ops between the matrix products; it changes the order of a few
roundings and nothing else, so compiled forecasts stay within the precision's rounding of eager ones.
"""

import numpy as np
import pytest

from forecasting_pipeline.forecasting.compilation import (
    COMPILE_MIN_PASSES,
    MAX_COMPILED_SHAPES,
    compiled_encoder,
    compiled_passes,
    should_compile,
)
from forecasting_pipeline.forecasting.model import load_chronos2
from forecasting_pipeline.forecasting.predict import predict_quantiles
from forecasting_pipeline.forecasting.runner import CPU_BATCH_SIZE, Chronos2Runner, series_count
from forecasting_pipeline_tests.conftest import real_origins

# Fused bfloat16 ops round at other points than eager ones; each is one bf16 rounding (2^-8).
BF16_ROUNDING_OF_STD = 0.01
# A stored price moved by at most one bf16 rounding of its level.
BF16_RELATIVE_ROUNDING = 2**-8


def test_when_auto_decides_then_only_long_cpu_calls_compile():
    full = COMPILE_MIN_PASSES * CPU_BATCH_SIZE

    assert should_compile("auto", "cpu", full, CPU_BATCH_SIZE)
    assert not should_compile("auto", "cpu", full - 1, CPU_BATCH_SIZE)  # one pass short of the threshold
    assert should_compile("on", "cpu", 3, CPU_BATCH_SIZE)
    assert not should_compile("off", "cpu", 10 * full, CPU_BATCH_SIZE)
    assert not any(should_compile(s, "cuda", 10 * full, 256) for s in ("auto", "on", "off"))
    with pytest.raises(ValueError, match="compile must be one of auto, on, off, got 'yes'"):
        should_compile("yes", "cpu", 3, CPU_BATCH_SIZE)


def test_when_a_cpu_call_runs_compiled_then_it_forecasts_what_the_eager_model_does_on_real_bars(
    real_bars, tiny_checkpoint
):
    inputs = real_origins(real_bars("EURUSD"), 512, 20)  # 60 series: two full passes and a short one
    compiled = Chronos2Runner(model=str(tiny_checkpoint), device="cpu", dtype="bfloat16", compile="on")
    eager = Chronos2Runner(model=str(tiny_checkpoint), device="cpu", dtype="bfloat16", compile="off")

    done = compiled.predict(inputs, 24, 512)
    encoder = compiled_encoder(compiled.load("cpu").pipeline)
    passes_after_compiled_call = encoder.compiled_passes
    reference = eager.predict(inputs, 24, 512)

    assert series_count(inputs) // CPU_BATCH_SIZE == 2
    assert (encoder.failure, passes_after_compiled_call, encoder.compiled_passes) == (None, 2, 2)
    assert encoder.shapes == {(CPU_BATCH_SIZE, 512 // 16 + 1 + 2, 6)}  # patches, REG token, future patches
    spread = np.array([np.std(x["target"]) for x in inputs])
    moved = np.abs(done.quantiles - reference.quantiles).max(axis=(1, 2)) / spread
    assert 0 < moved.max() <= BF16_ROUNDING_OF_STD
    assert done.model.version == reference.model.version


def test_when_calls_bring_new_pass_shapes_then_only_the_first_few_compile_and_the_rest_run_eagerly(
    real_bars, tiny_checkpoint
):
    loaded = load_chronos2(str(tiny_checkpoint), revision="shapes", dtype="bfloat16")
    bars = real_bars("GOOG")
    # (context, horizon): the pass shapes the other tests compile too, so that inductor's cache
    # spares the suite a compilation, and one more.
    calls = [(512, 24), (1024, 10), (256, 10)][: MAX_COMPILED_SHAPES + 1]

    with compiled_passes(loaded.pipeline, CPU_BATCH_SIZE) as encoder:
        for context, horizon in calls:
            inputs = real_origins(bars, context, CPU_BATCH_SIZE // 3)  # one full pass
            predict_quantiles(loaded.pipeline, inputs, horizon, context, batch_size=CPU_BATCH_SIZE)

    assert len(encoder.shapes) == MAX_COMPILED_SHAPES
    assert encoder.compiled_passes == MAX_COMPILED_SHAPES


def test_when_compiling_fails_then_the_model_runs_eagerly_and_says_why(real_bars, tiny_checkpoint, tmp_path, caplog):
    """Other tests compile this pass shape too: the empty cache keeps their compilation from hiding the failure."""
    import torch
    from torch._inductor import config as inductor
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    loaded = load_chronos2(str(tiny_checkpoint), revision="no-compiler", dtype="float32")
    inputs = real_origins(real_bars("GOOG"), 128, 4)
    expected = predict_quantiles(loaded.pipeline, inputs, 10, 128, batch_size=6)

    # A machine without a C++ compiler: inductor's build step fails.
    torch._dynamo.reset()
    with inductor.patch({"cpp.cxx": (None, str(tmp_path / "no-such-compiler"))}), \
            temporary_cache_dir(str(tmp_path / "inductor")), compiled_passes(loaded.pipeline, 6) as encoder:
        done = predict_quantiles(loaded.pipeline, inputs, 10, 128, batch_size=6)
        again = predict_quantiles(loaded.pipeline, inputs, 10, 128, batch_size=6)
    torch._dynamo.reset()

    assert "C++ compiler" in encoder.failure and encoder.compiled_passes == 0
    assert "compiling Chronos-2 failed" in caplog.text and "runs eagerly" in caplog.text
    np.testing.assert_array_equal(done, expected)
    np.testing.assert_array_equal(again, expected)


def test_when_a_backfill_run_compiles_then_its_rows_are_those_of_an_uncompiled_run(
    resources, instance, conn, tiny_checkpoint
):
    import dagster as dg

    from forecasting_pipeline.orchestration.chain import build_chain
    from forecasting_pipeline.orchestration.resources import Chronos2Resource
    from forecasting_pipeline.storage.ml_predictions import read_predictions
    from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS

    window_range = {"dagster/asset_partition_range_start": "2025-06-02",
                    "dagster/asset_partition_range_end": "2025-06-04"}

    def run(compile_setting: str):
        chronos2 = Chronos2Resource(model=str(tiny_checkpoint), compile=compile_setting)
        result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), resources={**resources, "chronos2": chronos2},
                                instance=instance, tags=window_range)
        assert result.success
        return read_predictions(conn, "1d").sort("symbol", "as_of", "ts")

    # The model the runs load: this process's cached one (other tests may have compiled it already).
    encoder = compiled_encoder(Chronos2Resource(model=str(tiny_checkpoint)).configured_runner().load("cpu").pipeline)
    before = encoder.compiled_passes
    compiled = run("on")
    after_compiled_run = encoder.compiled_passes
    uncompiled = run("off")

    assert compiled.select("symbol", "as_of").unique().height == 3 * 23
    assert after_compiled_run - before == 3 * 23 * 3 // CPU_BATCH_SIZE  # every full pass of the run's one call
    assert encoder.compiled_passes == after_compiled_run  # and none of the uncompiled run's
    assert compiled.select("symbol", "as_of", "ts").equals(uncompiled.select("symbol", "as_of", "ts"))
    moved = ((compiled["p50"] - uncompiled["p50"]).abs() / uncompiled["p50"].abs()).max()
    assert moved <= BF16_RELATIVE_ROUNDING
