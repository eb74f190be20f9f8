"""The ensemble benchmark's smoke run: both band calibrations on real GOOG bars of 2008, end to end, as a user runs it.

``benchmarks/ensemble_schemes.py --smoke`` builds the members (the tiny checkpoint, the Kronos
stand-in, the volatility band) in a database of its own on the test server, runs the ensemble
with the ``recent`` and the ``adaptive`` band, and prints coverage per quarter and per step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_when_the_benchmark_runs_in_smoke_mode_then_it_reports_both_bands_per_quarter_and_per_step(server_url, tmp_path):
    out = tmp_path / "smoke.json"

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ensemble_schemes.py"), "--smoke", "--json", str(out)],
        env={**os.environ, "DATABASE_URL": server_url}, capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    [run] = json.loads(out.read_text())["band"]["runs"]
    assert run["data"] == "GOOG 2008 (smoke)"
    for band in ("ensemble-recent", "ensemble-adaptive"):
        assert list(run["quarters"][band]) == ["2008Q1", "2008Q2"]
        assert list(run["steps"][band]) == [str(step) for step in range(1, 11)]
        assert all(0.0 <= coverage <= 1.0 for coverage in run["steps"][band].values())
    overall = run["overall"]
    # The calibration moves only the band: both share the weights, so p50 is the same forecast.
    assert overall["ensemble-adaptive"]["scaled_mae"] == overall["ensemble-recent"]["scaled_mae"]
    assert overall["ensemble-adaptive"]["forecasts"] == overall["ensemble-recent"]["forecasts"] > 100
    assert "p50 scaled MAE adaptive / recent 1.000" in done.stdout and "step 10" in done.stdout
