"""The naive peer: the plain script first planned, one model call per symbol and one INSERT per row.

It reads the same sample bars, uses the same checkpoint, context and horizon as the pipeline, and
writes the same ``ml_predictions`` rows (same key, so it replaces the pipeline's rows for the
window). On its last stdout line it prints JSON with its own timings.

    DATABASE_URL=... python benchmarks/naive.py --checkpoint DIR --cadence 1d --window 2026-03-02 \
        --context 1024 --horizon 10 [--device cpu] [--dtype float32|bfloat16]
    python benchmarks/naive.py --smoke   # a fresh database on DATABASE_URL's server (or the embedded one)
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
import torch  # noqa: E402
from chronos import Chronos2Pipeline  # noqa: E402
from workload import script_arguments  # noqa: E402

from forecasting_pipeline.forecasting.inputs import model_inputs  # noqa: E402
from forecasting_pipeline.market.calendars import next_bar_closes  # noqa: E402
from forecasting_pipeline.market.features import engineer_covariates  # noqa: E402
from forecasting_pipeline.market.instruments import load_instruments  # noqa: E402
from forecasting_pipeline.market.sources.sample import sample_bars  # noqa: E402

INSERT = """
INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, predictions, created_at)
VALUES (%s, %s, 'chronos-2', %s, %s, %s::jsonb, now())
ON CONFLICT (symbol, timeframe, model_name, as_of)
DO UPDATE SET predictions = EXCLUDED.predictions, model_version = EXCLUDED.model_version, created_at = now()
"""


def main() -> int:
    args, work = script_arguments(__doc__)
    if not args.smoke:
        return naive(args, work, os.environ["DATABASE_URL"])
    from common import fresh_database

    with fresh_database("naive_smoke") as url:
        return naive(args, work, url)


def naive(args, work, database_url: str) -> int:
    imported = time.perf_counter()
    pipeline = Chronos2Pipeline.from_pretrained(args.checkpoint, device_map=args.device, dtype=getattr(torch, args.dtype))
    loaded = time.perf_counter()
    conn = psycopg.connect(database_url, autocommit=True)
    predict_s = data_s = write_s = 0.0
    rows = 0
    for instrument in load_instruments():
        t = time.perf_counter()
        bars = sample_bars(instrument, work.cadence, work.window_end, work.context_length)
        keys, inputs = model_inputs(engineer_covariates(bars), work.window, work.context_length)
        data_s += time.perf_counter() - t
        t = time.perf_counter()
        quantiles, _ = pipeline.predict_quantiles(
            inputs, prediction_length=work.horizon, quantile_levels=[0.1, 0.5, 0.9], context_length=work.context_length
        )
        predict_s += time.perf_counter() - t
        t = time.perf_counter()
        q = np.sort(quantiles[0][0].float().numpy().astype(np.float64), axis=-1)
        as_of = keys[0].as_of
        times = next_bar_closes(instrument.calendar, work.cadence, as_of, work.horizon)
        steps = [
            {"step": i + 1, "ts": ts.isoformat(), "p10": lo, "p50": mid, "p90": hi, "close": mid}
            for i, (ts, (lo, mid, hi)) in enumerate(zip(times, q.tolist()))
        ]
        conn.execute(INSERT, (instrument.symbol, work.cadence, f"naive {args.checkpoint}", as_of, json.dumps(steps)))
        rows += 1
        write_s += time.perf_counter() - t
    conn.close()
    done = time.perf_counter()
    print(json.dumps({
        "rows": rows, "imports_s": imported - STARTED, "load_s": loaded - imported, "data_s": data_s,
        "predict_s": predict_s, "write_s": write_s, "in_process_total_s": done - STARTED,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
