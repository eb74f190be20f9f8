"""The asset chain for one cadence: OHLCV history -> covariates -> Chronos-2 quantiles -> ml_predictions rows.

Every asset is partitioned by time window and holds all instruments inside each window, so one
run and one batched model call serve a whole window (or, in a backfill, many windows). Assets
are thin: the work is in features, forecasting and ml_predictions.
"""


# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
import time
from datetime import datetime

import dagster as dg
import polars as pl
from pydantic import Field

from forecasting_pipeline.cadences import Cadence, check_horizon
from forecasting_pipeline.calendars import next_bar_closes
from forecasting_pipeline.database import PostgresResource
from forecasting_pipeline.features import engineer_covariates
from forecasting_pipeline.forecasting import (
    QUANTILE_LEVELS,
    forecast_problems,
    model_inputs,
    predict_quantiles,
    shape_forecasts,
)
from forecasting_pipeline.ml_predictions import prediction_rows, upsert_window
from forecasting_pipeline.resources import Chronos2Resource, InstrumentsResource, MarketDataResource

FRAMES_IO_MANAGER = "frames_io_manager"


class HistoryConfig(dg.Config):
    history_bars: int | None = Field(
        default=None, description="Bars of history per instrument; the cadence's context length when unset."
    )


class ForecastConfig(dg.Config):
    horizon: int | None = Field(default=None, description="Steps to forecast; the cadence default when unset (1h: 24, 1d: 10).")
    context_length: int | None = Field(
        default=None, description="Bars the model reads; the cadence default when unset (1h: 2048, 1d: 1024)."
    )


def window_ends(context: dg.AssetExecutionContext, cadence: Cadence) -> dict[str, datetime]:
    """Partition key -> window end, for a run of one window or a range of them."""
    return {
        key: cadence.partitions_def.time_window_for_partition_key(key).end for key in context.partition_keys
    }


def markdown_table(frame: pl.DataFrame, max_rows: int = 30) -> dg.MetadataValue:
    head = frame.head(max_rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    for row in head.iter_rows():
        cells = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def build_chain(cadence: Cadence) -> list[dg.AssetsDefinition]:
    """The four assets of one cadence's chain."""
    c = cadence.name
    group = f"chronos2_{c}"
    common = dict(
        partitions_def=cadence.partitions_def,
        group_name=group,
        backfill_policy=dg.BackfillPolicy.multi_run(cadence.windows_per_backfill_run),
    )

    @dg.asset(name=f"ohlcv_{c}", io_manager_key=FRAMES_IO_MANAGER, kinds={"polars"}, **common)
    def ohlcv(
        context: dg.AssetExecutionContext,
        config: HistoryConfig,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
    ) -> dg.Output[dict[str, pl.DataFrame]]:
        """OHLCV bars per instrument that closed at or before the window's end: nothing later enters the window."""
        n_bars = config.history_bars or cadence.context_length
        universe = instruments.instruments()
        out: dict[str, pl.DataFrame] = {}
        failures: dict[str, str] = {}
        for key, end in window_ends(context, cadence).items():
            bars, errors = market_data.bars(universe, c, end, n_bars)
            for symbol, reason in errors.items():
                context.log.error(f"{key}: {symbol}: {reason}")
                failures[f"{key} {symbol}"] = reason
            out[key] = bars
        rows = sum(len(f) for f in out.values())
        return dg.Output(
            out,
            metadata={
                "source": market_data.describe(),
                "synthetic": market_data.is_synthetic,
                "windows": len(out),
                "instruments": len(universe),
                "rows": rows,
                "unreadable": dg.MetadataValue.json(failures),
            },
        )

    @dg.asset(
        name=f"covariates_{c}",
        ins={"ohlcv": dg.AssetIn(f"ohlcv_{c}")},
        io_manager_key=FRAMES_IO_MANAGER,
        kinds={"polars"},
        **common,
    )
    def covariates(ohlcv: dict[str, pl.DataFrame]) -> dg.Output[dict[str, pl.DataFrame]]:
        """Per-bar model inputs: close (target), log1p volume and relative high-low spread."""
        out = {key: engineer_covariates(bars) for key, bars in ohlcv.items()}
        return dg.Output(out, metadata={"windows": len(out), "rows": sum(len(f) for f in out.values())})

    @dg.asset(
        name=f"chronos2_forecasts_{c}",
        ins={"covariates": dg.AssetIn(f"covariates_{c}")},
        io_manager_key=FRAMES_IO_MANAGER,
        kinds={"pytorch"},
        pool="gpu",
        check_specs=[
            dg.AssetCheckSpec("quantiles_ordered_and_finite", asset=f"chronos2_forecasts_{c}", blocking=True,
                              description="p10 <= p50 <= p90 and every value finite, for every step."),
            dg.AssetCheckSpec("horizon_complete", asset=f"chronos2_forecasts_{c}", blocking=True,
                              description="Every instrument has exactly `horizon` steps."),
        ],
        **common,
    )
    def chronos2_forecasts(
        context: dg.AssetExecutionContext,
        config: ForecastConfig,
        covariates: dict[str, pl.DataFrame],
        instruments: InstrumentsResource,
        chronos2: Chronos2Resource,
    ):
        """Chronos-2 p10/p50/p90 close forecasts per instrument, timestamped on each instrument's trading calendar."""
        horizon = config.horizon or cadence.horizon
        context_length = config.context_length or cadence.context_length
        check_horizon(horizon)
        calendar_of = {i.symbol: i.calendar for i in instruments.instruments()}

        keys, inputs = [], []
        for window, frame in covariates.items():
            k, x = model_inputs(frame, window, context_length)
            keys += k
            inputs += x
        started = time.perf_counter()
        loaded = chronos2.load()
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        quantiles = predict_quantiles(loaded.pipeline, inputs, horizon, context_length, chronos2.batch_size)
        predict_s = time.perf_counter() - started
        context.log.info(f"forecast {len(inputs)} series x {horizon} steps in {predict_s:.2f}s on {loaded.device}")

        forecasts = shape_forecasts(
            keys, quantiles, lambda symbol, as_of, n: next_bar_closes(calendar_of[symbol], c, as_of, n)
        ).with_columns(pl.lit(loaded.version).alias("model_version"))
        problems = forecast_problems(forecasts, horizon)
        out = {
            window: forecasts.filter(pl.col("window") == window).drop("window") for window in covariates
        }
        yield dg.Output(
            out,
            metadata={
                "model_version": loaded.version,
                "device": loaded.device,
                "dtype": loaded.dtype,
                "context_length": context_length,
                "horizon": horizon,
                "quantiles": dg.MetadataValue.json(list(QUANTILE_LEVELS)),
                "series": len(inputs),
                "windows": len(out),
                "model_load_seconds": round(load_s, 3),
                "predict_seconds": round(predict_s, 3),
                "preview": markdown_table(
                    forecasts.filter(pl.col("step") == 1).select("window", "symbol", "as_of", "ts", "p10", "p50", "p90")
                ),
            },
        )
        crossing = [p for p in problems if "cross" in p or "non-finite" in p]
        yield dg.AssetCheckResult(
            check_name="quantiles_ordered_and_finite",
            passed=not crossing,
            metadata={"problems": dg.MetadataValue.json(crossing[:20])},
        )
        short = [p for p in problems if "steps" in p]
        yield dg.AssetCheckResult(
            check_name="horizon_complete", passed=not short, metadata={"problems": dg.MetadataValue.json(short[:20])}
        )

    @dg.asset(
        name=f"ml_predictions_{c}",
        ins={"forecasts": dg.AssetIn(f"chronos2_forecasts_{c}")},
        kinds={"postgres"},
        **common,
    )
    def ml_predictions(
        context: dg.AssetExecutionContext, forecasts: dict[str, pl.DataFrame], database: PostgresResource
    ) -> dg.MaterializeResult:
        """Chronos-2 rows in ml_predictions (model_name 'chronos-2'), upserted in one transaction per window."""
        written = 0
        with database.connection() as conn:
            for done, (window, frame) in enumerate(sorted(forecasts.items()), start=1):
                versions = frame["model_version"].unique().to_list()
                rows = prediction_rows(frame, c, versions[0])
                written += upsert_window(conn, rows)
                context.log.info(f"window {window}: {len(rows)} rows ({done}/{len(forecasts)} windows)")
        preview = pl.concat(list(forecasts.values())).filter(pl.col("step") == 1)
        return dg.MaterializeResult(
            metadata={
                "rows": written,
                "windows": len(forecasts),
                "database": database.describe(),
                "preview": markdown_table(preview.select("symbol", "as_of", "ts", "p10", "p50", "p90")),
            }
        )

    return [ohlcv, covariates, chronos2_forecasts, ml_predictions]
