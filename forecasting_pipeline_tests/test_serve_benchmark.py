"""The serving benchmark's smoke run: every part of ``benchmarks/serve.py`` on the tiny checkpoint, in seconds.

It starts real services and sends real traffic, so the scenario the docs' tables come from keeps working; the
figures of a smoke run mean nothing and are not checked, only that each one was measured.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "served_over_bare_throughput", "batched_over_unbatched_throughput", "serve_p95_s_c8", "serve_p95_c8_over_bare_call_8",
    "serve_p95_s_during_backfill", "backfill_throughput_beside_serve_over_alone", "serve_p95_s_during_backfill_c8",
    "backfill_throughput_beside_8_clients_over_alone", "serve_p95_s_gpu_lock_held",
}


def test_when_the_serving_benchmark_runs_in_smoke_mode_then_it_measures_every_figure(server_url, tmp_path):
    out = tmp_path / "serve.json"

    done = subprocess.run(
        [sys.executable, "benchmarks/serve.py", "--smoke", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
        timeout=300, env={**os.environ, "DATABASE_URL": server_url},
    )

    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["ratios"]) == KEYS
    assert all(math.isfinite(value) and value > 0 for value in results["ratios"].values())
    backfill = results["backfill"]
    assert backfill["series"] == 46 and [p["alone"]["device"] for p in backfill["pairs"]] == ["cpu", "cpu"]
    assert "serve_p95_s_during_backfill" in done.stdout
