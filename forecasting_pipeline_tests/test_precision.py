"""Precision: ``auto`` picks bfloat16 where the hardware computes it natively, and bf16 forecasts stay close to fp32.

The CPU's flags are read from a ``/proc/cpuinfo`` text (the hardware is the boundary here: a
file written in the kernel's format); the model is the real tiny Chronos-2 on real bars.
"""

from pathlib import Path

import numpy as np
import pytest

from forecasting_pipeline.forecasting.precision import cpu_flags, cpu_has_native_bf16, resolve_dtype
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline_tests.conftest import real_origins

# Lines of /proc/cpuinfo as Linux writes them (flags cut down): a 4th-generation Xeon with AMX,
# an EPYC with AVX512-BF16 and no AMX, and an older Xeon with neither.
AMX_XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
BF16_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t\t: fpu sse2 avx avx2 fma\n"

# bf16 keeps 8 significant bits, so its forecasts move by a small fraction of the series' spread.
# Measured: the tiny checkpoint's three quantiles moved at most 0.0002 of the context's std on these
# bars; the full-size random checkpoint's p50 at most 0.0055 (benchmarks/run.py prints it). A
# hundredth is well above both, and well below what a precision bug costs: older chronos releases
# that cast bf16 outputs back lost about 0.4% of the price level, several hundredths of GOOG's std.
TOLERANCE_OF_STD = 0.01


@pytest.mark.parametrize(("cpuinfo", "native"), [(AMX_XEON, True), (BF16_EPYC, True), (OLD_XEON, False)],
                         ids=["amx", "avx512-bf16", "neither"])
def test_when_the_cpu_has_native_bf16_then_auto_is_bfloat16_on_the_cpu(cpuinfo, native, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)

    assert cpu_has_native_bf16(path) is native
    assert resolve_dtype("auto", "cpu", cpuinfo=path) == ("bfloat16" if native else "float32")


def test_when_the_flags_cannot_be_read_then_auto_is_float32(tmp_path):
    assert resolve_dtype("auto", "cpu", cpuinfo=tmp_path / "missing") == "float32"
    assert cpu_flags("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_when_a_dtype_is_forced_then_the_hardware_is_not_asked(forced, tmp_path):
    assert resolve_dtype(forced, "cpu", cpuinfo=tmp_path / "missing") == forced
    assert resolve_dtype(forced, "cuda", cuda=None) == forced


def test_when_the_dtype_is_unknown_then_it_is_refused():
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, got 'float16'"):
        resolve_dtype("float16", "cpu")


@pytest.mark.parametrize(("name", "context", "horizon"), [("GOOG", 512, 10), ("EURUSD", 1024, 24)])
def test_when_one_checkpoint_runs_in_bfloat16_and_float32_then_forecasts_of_real_bars_agree_within_a_hundredth_of_the_std(
    name, context, horizon, real_bars, tiny_checkpoint
):
    inputs = real_origins(real_bars(name), context, 12)
    runs = {
        dtype: Chronos2Runner(model=str(tiny_checkpoint), device="cpu", dtype=dtype).predict(inputs, horizon, context)
        for dtype in ("float32", "bfloat16")
    }
    spread = np.array([np.std(x["target"]) for x in inputs])

    moved = np.abs(runs["bfloat16"].quantiles - runs["float32"].quantiles).max(axis=(1, 2)) / spread

    assert moved.max() <= TOLERANCE_OF_STD
    assert [runs[d].model.dtype for d in runs] == ["float32", "bfloat16"]
    assert runs["float32"].model.version.replace(" float32 ", " bfloat16 ") == runs["bfloat16"].model.version


def test_when_this_machine_runs_auto_then_its_dtype_follows_its_own_cpu_flags(tiny_checkpoint, daily_inputs):
    done = Chronos2Runner(model=str(tiny_checkpoint), device="cpu").predict(daily_inputs, 10, 64)

    expected = "bfloat16" if cpu_has_native_bf16(Path("/proc/cpuinfo")) else "float32"
    assert (done.model.dtype, f" {expected} " in done.model.version) == (expected, True)
