"""How a forward pass runs on the CPU: small passes and the machine's attention kernel, with the same forecasts.

The CPU's defaults are chosen for speed only (docs/performance.md). Chronos-2 masks its group
attention so that each instrument's series attend only to one another, so how the series are cut
into passes cannot change a forecast; nor can the kernel, which computes the same attention.
"""

import numpy as np
import pytest

from forecasting_pipeline.forecasting.model import load_chronos2, use_attention
from forecasting_pipeline.forecasting.predict import predict_quantiles
from forecasting_pipeline.forecasting.runner import CPU_BATCH_SIZE, Chronos2Runner, attention_for
from forecasting_pipeline_tests.conftest import real_origins
from forecasting_pipeline_tests.test_precision import AMX_XEON, BF16_EPYC, OLD_XEON

# float32 sums in another order (another kernel, other passes) move a quantile by rounding only.
ROUNDING_OF_STD = 1e-4


def _attention_of(pipeline) -> set[str]:
    return {m.config._attn_implementation for m in pipeline.model.modules() if hasattr(m, "config")}


@pytest.mark.parametrize(("cpuinfo", "kernel"), [(AMX_XEON, "sdpa"), (BF16_EPYC, "eager"), (OLD_XEON, "eager")],
                         ids=["amx", "avx512-bf16", "neither"])
def test_when_a_call_runs_on_the_cpu_then_amx_takes_the_fused_kernel_and_other_cpus_the_eager_one(
    cpuinfo, kernel, tmp_path
):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)

    assert attention_for("cpu", path) == kernel
    assert attention_for("cuda", path) == "sdpa"


def test_when_the_runner_calls_the_model_then_it_runs_this_machines_kernel(tiny_checkpoint, daily_inputs):
    runner = Chronos2Runner(model=str(tiny_checkpoint), device="cpu", dtype="float32")

    runner.predict(daily_inputs, 10, 64)

    assert _attention_of(runner.load("cpu").pipeline) == {attention_for("cpu")}


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize(("name", "context", "horizon"), [("GOOG", 512, 10), ("EURUSD", 1024, 24)])
def test_when_a_cpu_call_runs_in_small_passes_with_either_kernel_then_it_forecasts_what_one_sdpa_pass_does(
    name, context, horizon, kernel, real_bars, tiny_checkpoint
):
    inputs = real_origins(real_bars(name), context, CPU_BATCH_SIZE)  # three series each: several CPU passes
    loaded = load_chronos2(str(tiny_checkpoint), dtype="float32")
    use_attention(loaded.pipeline, kernel)
    done = predict_quantiles(loaded.pipeline, inputs, horizon, context, batch_size=CPU_BATCH_SIZE)
    use_attention(loaded.pipeline, "sdpa")
    one_pass = predict_quantiles(loaded.pipeline, inputs, horizon, context, batch_size=3 * len(inputs))

    assert Chronos2Runner().batch_size_for("cpu") == CPU_BATCH_SIZE < 3 * len(inputs)
    spread = np.array([np.std(x["target"]) for x in inputs])
    moved = np.abs(done - one_pass).max(axis=(1, 2)) / spread
    assert moved.max() <= ROUNDING_OF_STD


def test_when_the_kernel_is_switched_then_the_next_call_runs_it(tiny_checkpoint, daily_inputs, monkeypatch):
    import torch.nn.functional as functional

    sdpa_calls = []
    real_sdpa = functional.scaled_dot_product_attention
    monkeypatch.setattr(functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: sdpa_calls.append(1) or real_sdpa(*args, **kwargs))
    loaded = load_chronos2(str(tiny_checkpoint), dtype="float32")

    use_attention(loaded.pipeline, "eager")
    eager = predict_quantiles(loaded.pipeline, daily_inputs, 10, 64)
    calls_eager = len(sdpa_calls)
    use_attention(loaded.pipeline, "sdpa")
    sdpa = predict_quantiles(loaded.pipeline, daily_inputs, 10, 64)

    assert (calls_eager, len(sdpa_calls) > 0, _attention_of(loaded.pipeline)) == (0, True, {"sdpa"})
    np.testing.assert_allclose(eager, sdpa, rtol=1e-4)
