"""The asset chain for one cadence: OHLCV history -> covariates -> Chronos-2 quantiles -> ml_predictions rows.

Every asset is partitioned by time window and holds all instruments inside each window, so one
run and one batched model call serve a whole window (or, in a backfill, many windows). Assets
are thin: the work is in features, forecasting and ml_predictions.
"""


# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
import os
from datetime import datetime

import dagster as dg
import polars as pl
from pydantic import Field

from forecasting_pipeline.orchestration.cadences import Cadence, check_horizon
from forecasting_pipeline.market.calendars import next_bar_closes
from forecasting_pipeline.storage.database import PostgresResource
from forecasting_pipeline.serving.fan_charts import window_fan_chart
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.forecasting.inputs import (
    QUANTILE_LEVELS,
    drop_rejected,
    rejections_frame,
    require_some_forecasts,
    shape_forecasts,
    unfit_forecasts,
    usable_model_inputs,
)
from forecasting_pipeline.storage.ml_predictions import prediction_rows, upsert_window
from forecasting_pipeline.orchestration.resources import Chronos2Resource, InstrumentsResource, MarketDataResource
from forecasting_pipeline.market.instruments import load_instruments
from forecasting_pipeline.market.validation import (
    EXCLUDED,
    ValidationConfig,
    check_names,
    findings_frame,
    require_some_instruments,
    validate_window,
)

FRAMES_IO_MANAGER = "frames_io_manager"
# A write that fails (server restarting, connection killed) rolls back its window and is retried
# after 2 s, then 4 s; each window's upsert is idempotent, so a retry writes the full set once.
WRITE_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


class HistoryConfig(dg.Config):
    history_bars: int | None = Field(
        default=None, description="Bars of history per instrument; the cadence's context length when unset."
    )
    # Bar-validation thresholds (forecasting_pipeline.market.validation.ValidationConfig documents each).
    min_history_bars: int = Field(default=ValidationConfig.min_history_bars, description="Fewer bars exclude the instrument.")
    jump_sigma: float = Field(default=ValidationConfig.jump_sigma, description="Returns beyond this many robust sigmas are reported.")
    max_missing_fraction: float = Field(
        default=ValidationConfig.max_missing_fraction, description="Share of calendar closes that may be missing."
    )
    max_stale_bars: int = Field(
        default=ValidationConfig.max_stale_bars, description="Calendar closes after the last bar that may be missing."
    )

    def validation(self) -> ValidationConfig:
        return ValidationConfig(
            min_history_bars=self.min_history_bars, jump_sigma=self.jump_sigma,
            max_missing_fraction=self.max_missing_fraction, max_stale_bars=self.max_stale_bars,
        )


def definition_symbols() -> list[str]:
    """The universe's symbols when definitions load (INSTRUMENTS_FILE or the default), for per-instrument checks."""
    return [i.symbol for i in load_instruments(os.environ.get("INSTRUMENTS_FILE") or None)]


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


def build_chain(cadence: Cadence, symbols: list[str] | None = None) -> list[dg.AssetsDefinition]:
    """The four assets of one cadence's chain; ``symbols`` (default: ``definition_symbols()``) get a bar check each."""
    c = cadence.name
    group = f"chronos2_{c}"
    common = dict(
        partitions_def=cadence.partitions_def,
        group_name=group,
        backfill_policy=dg.BackfillPolicy.multi_run(cadence.windows_per_backfill_run),
    )

    bar_checks = check_names(symbols if symbols is not None else definition_symbols())

    # A multi_asset only for can_subset: a run restricted to some symbols (InstrumentsResource.symbols)
    # leaves the other instruments' checks without a result instead of claiming they passed.
    @dg.multi_asset(
        name=f"ohlcv_{c}",
        outs={f"ohlcv_{c}": dg.AssetOut(
            io_manager_key=FRAMES_IO_MANAGER, kinds={"polars"},
            description="Validated OHLCV bars per instrument that closed at or before the window's end.",
        )},
        # Not blocking: one instrument's bad bars must not stop the other instruments' forecasts.
        check_specs=[
            dg.AssetCheckSpec(name, asset=f"ohlcv_{c}", description=f"{symbol}'s bars pass validation (not excluded).")
            for symbol, name in bar_checks.items()
        ],
        can_subset=True,
        **common,
    )
    def ohlcv(
        context: dg.AssetExecutionContext,
        config: HistoryConfig,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
    ):
        """Validated OHLCV bars per instrument that closed at or before the window's end; excluded instruments are left out."""
        n_bars = config.history_bars or cadence.context_length
        rules = config.validation()
        universe = instruments.instruments()
        out: dict[str, pl.DataFrame] = {}
        findings: list[pl.DataFrame] = []
        excluded: dict[str, list[str]] = {}
        for key, end in window_ends(context, cadence).items():
            bars, errors = market_data.bars(universe, c, end, n_bars)
            validated = validate_window(bars, universe, c, end, rules, source_errors=errors)
            findings.append(findings_frame(validated.findings).with_columns(pl.lit(key).alias("window")))
            for symbol in validated.excluded:
                excluded.setdefault(symbol, []).append(key)
                context.log.error(f"{key}: {symbol} excluded: " + "; ".join(
                    f"{f.rule}: {f.message}" for f in validated.findings_of(symbol) if f.action == EXCLUDED
                ))
            require_some_instruments(key, validated)
            out[key] = validated.bars
        found = pl.concat(findings).select("window", "symbol", "ts", "rule", "action", "message")
        # A '|' inside a message would split a markdown table cell.
        table = found.with_columns(pl.col("message").str.replace_all("|", "\\|", literal=True))
        yield dg.Output(
            out,
            output_name=f"ohlcv_{c}",
            metadata={
                "source": market_data.describe(),
                "synthetic": market_data.is_synthetic,
                "windows": len(out),
                "instruments": len(universe),
                "rows": sum(len(f) for f in out.values()),
                "excluded": dg.MetadataValue.json(excluded),
                "findings": len(found),
                "findings_table": markdown_table(table.sort(pl.col("action") != EXCLUDED, "window", "symbol"), 50),
            },
        )
        # Checks exist for the universe known when definitions load. Symbols outside this run's
        # selection (InstrumentsResource.symbols) were not read and get no result; a run-time symbol
        # without a check (another INSTRUMENTS_FILE) is still reported in the metadata above.
        for instrument in universe:
            if instrument.symbol not in bar_checks:
                continue
            mine = found.filter(pl.col("symbol") == instrument.symbol)
            yield dg.AssetCheckResult(
                check_name=bar_checks[instrument.symbol],
                passed=instrument.symbol not in excluded,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "excluded_windows": dg.MetadataValue.json(excluded.get(instrument.symbol, [])),
                    "findings": len(mine),
                    "findings_table": markdown_table(table.filter(pl.col("symbol") == instrument.symbol).drop("symbol"), 20),
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
        # Not blocking: an instrument that fails one is left out of the asset (and so of the stored
        # rows) and named in its metadata, while the other instruments' forecasts are written.
        check_specs=[
            dg.AssetCheckSpec("inputs_in_model_range", asset=f"chronos2_forecasts_{c}",
                              description="Every instrument's context is finite in float32, the model's precision."),
            dg.AssetCheckSpec("quantiles_ordered_and_finite", asset=f"chronos2_forecasts_{c}",
                              description="p10 <= p50 <= p90 and every value finite, for every step."),
            dg.AssetCheckSpec("horizon_complete", asset=f"chronos2_forecasts_{c}",
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

        keys, inputs, rejected = [], [], []
        for window, frame in covariates.items():
            k, x, r = usable_model_inputs(frame, window, context_length)
            keys += k
            inputs += x
            rejected += r
        for r in rejected:
            context.log.error(f"{r.window}: {r.symbol} left out before the model: {r.message}")
        require_some_forecasts(covariates, {k.window for k in keys}, rejected)
        # --- device placement and the model call (issue 3: gpu.py decides CUDA or CPU, with fallback) ---
        quantiles, model, timings, device_run = chronos2.predict_quantiles(inputs, horizon, context_length)
        load_s, predict_s = timings["model_load_seconds"], timings["predict_seconds"]
        if device_run.fell_back:
            context.log.warning(f"ran on the CPU instead of the GPU: {device_run.reason}")
        context.log.info(f"forecast {len(inputs)} series x {horizon} steps in {predict_s:.2f}s on {model.device} ({device_run.model_process})")
        # --- end of device placement ---

        forecasts = shape_forecasts(
            keys, quantiles, lambda symbol, as_of, n: next_bar_closes(calendar_of[symbol], c, as_of, n)
        ).with_columns(pl.lit(model.version).alias("model_version"))
        unfit = unfit_forecasts(forecasts, horizon)
        for r in unfit:
            context.log.error(f"{r.window}: {r.symbol} forecast left out ({r.rule}): {r.message}")
        rejected += unfit
        forecasts = drop_rejected(forecasts, unfit)
        require_some_forecasts(covariates, set(forecasts["window"].unique()), rejected)
        out = {
            window: forecasts.filter(pl.col("window") == window).drop("window") for window in covariates
        }
        left_out: dict[str, list[str]] = {}
        for r in rejected:
            left_out.setdefault(r.symbol, []).append(r.window)
        # A '|' inside a message would split a markdown table cell.
        rejected_table = rejections_frame(rejected).with_columns(
            pl.col("message").str.replace_all("|", "\\|", literal=True)
        )
        yield dg.Output(
            out,
            metadata={
                "model_version": model.version,
                "device": model.device,
                "dtype": model.dtype,
                "context_length": context_length,
                "horizon": horizon,
                "quantiles": dg.MetadataValue.json(list(QUANTILE_LEVELS)),
                "series": len(inputs),
                "windows": len(out),
                "rejected": dg.MetadataValue.json(left_out),
                "rejected_table": markdown_table(rejected_table),
                "model_load_seconds": round(load_s, 3),
                "predict_seconds": round(predict_s, 3),
                **device_run.metadata(),
                "preview": markdown_table(
                    forecasts.filter(pl.col("step") == 1).select("window", "symbol", "as_of", "ts", "p10", "p50", "p90")
                ),
            },
        )
        for check_name, rules in (
            ("inputs_in_model_range", {"model_input"}),
            ("quantiles_ordered_and_finite", {"non_finite", "crossing"}),
            ("horizon_complete", {"horizon"}),
        ):
            problems = [str(r) for r in rejected if r.rule in rules]
            yield dg.AssetCheckResult(
                check_name=check_name,
                passed=not problems,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"left_out": len(problems), "problems": dg.MetadataValue.json(problems[:20])},
            )

    @dg.asset(
        name=f"ml_predictions_{c}",
        # covariates_<c> feeds only the forecast fan's history (its close column).
        ins={"forecasts": dg.AssetIn(f"chronos2_forecasts_{c}"), "covariates": dg.AssetIn(f"covariates_{c}")},
        kinds={"postgres"},
        retry_policy=WRITE_RETRY_POLICY,
        **common,
    )
    def ml_predictions(
        context: dg.AssetExecutionContext,
        forecasts: dict[str, pl.DataFrame],
        covariates: dict[str, pl.DataFrame],
        database: PostgresResource,
    ) -> dg.MaterializeResult:
        """Chronos-2 rows in ml_predictions (model_name 'chronos-2'), upserted in one transaction per window."""
        written = 0
        with database.connection() as conn:
            for done, (window, frame) in enumerate(sorted(forecasts.items()), start=1):
                versions = frame["model_version"].unique().to_list()
                rows = prediction_rows(frame, c, versions[0])
                written += upsert_window(conn, rows, window=window)
                context.log.info(f"window {window}: {len(rows)} rows ({done}/{len(forecasts)} windows)")
                # Backfill progress as metadata while the run goes on: one observation per stored window.
                context.log_event(dg.AssetObservation(
                    asset_key=context.asset_key, partition=window,
                    metadata={"windows_done": done, "windows_total": len(forecasts), "rows": len(rows)},
                ))
            # The forecast fan: last window only, Kronos overlaid where it matches. Every window is
            # committed by now, so a picture that cannot be drawn is reported, not a failed run.
            try:
                fan = window_fan_chart(conn, c, forecasts, covariates)
                fan_metadata = {
                    "forecast_fan": dg.MetadataValue.md(fan.markdown),
                    "forecast_fan_window": fan.window,
                    "kronos_overlay_instruments": len(fan.kronos_instruments),
                }
            except Exception as exc:
                context.log.warning(f"forecast fan not drawn ({type(exc).__name__}: {exc}); the rows are stored")
                fan_metadata = {"forecast_fan": dg.MetadataValue.md(f"Not drawn: {type(exc).__name__}: {exc}")}
        preview = pl.concat(list(forecasts.values())).filter(pl.col("step") == 1)
        return dg.MaterializeResult(
            metadata={
                "rows": written,
                "windows": len(forecasts),
                "database": database.describe(),
                "preview": markdown_table(preview.select("symbol", "as_of", "ts", "p10", "p50", "p90")),
                **fan_metadata,
            }
        )

    return [ohlcv, covariates, chronos2_forecasts, ml_predictions]
