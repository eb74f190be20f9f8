"""The asset chain of one cadence: OHLCV history -> covariates -> Chronos-2 quantiles -> ml_predictions rows.

Every asset is partitioned by window and holds all instruments inside each window, so one run
and one batched model call serve a whole window (or, in a backfill, many windows). Each asset
body calls a domain function and turns its result into metadata (``metadata``).
"""

# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
from collections.abc import Mapping

import dagster as dg
import polars as pl

from forecasting_pipeline.forecasting.shaping import AllForecastsRejectedError
from forecasting_pipeline.forecasting.window_forecasts import forecast_windows
from forecasting_pipeline.market.calendars import UpcomingCloses
from forecasting_pipeline.market.features import window_covariates
from forecasting_pipeline.market.validation import AllInstrumentsExcludedError, check_names
from forecasting_pipeline.market.window_bars import read_window_bars
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
from forecasting_pipeline.orchestration.metadata import (
    EVERY_WINDOW_WRITTEN,
    FORECAST_CHECKS,
    bar_check_results,
    exclusion_messages,
    forecast_check_results,
    forecast_metadata,
    nothing_to_forecast_reasons,
    rejection_messages,
    window_bars_metadata,
    windows_written_check,
    written_window_metadata,
)
from forecasting_pipeline.orchestration.partitions import Windows
from forecasting_pipeline.orchestration.pools import GPU_POOL
from forecasting_pipeline.orchestration.resources import (
    Chronos2Resource,
    InstrumentsResource,
    MarketDataResource,
    PostgresResource,
)
from forecasting_pipeline.orchestration.run_config import ForecastConfig, HistoryConfig
from forecasting_pipeline.orchestration.schedules import chain_group
from forecasting_pipeline.serving.fan_charts import fan_chart_metadata
from forecasting_pipeline.storage.ml_predictions import write_windows

FRAMES_IO_MANAGER = "frames_io_manager"
# What the chain's assets pass each other: window key -> polars frame (a dict, or WindowFrames, whose
# windows share their rows); Dagster's inferred Dict type would refuse the latter.
WINDOW_FRAMES = dg.DagsterType(
    name="WindowFrames", description="Window key -> polars DataFrame, one per window of the run.",
    type_check_fn=lambda _context, value: isinstance(value, Mapping),
)
# A write that fails (server restarting, connection killed) rolls back its window and is retried
# after 2 s, then 4 s; each window's upsert is idempotent, so a retry writes the full set once.
WRITE_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


def build_chain(
    windows: Windows, symbols: list[str], model_op_tags: Mapping[str, object] | None = None
) -> list[dg.AssetsDefinition]:
    """The four assets of one cadence's chain; each of ``symbols`` gets a bar-validation check.

    ``model_op_tags`` go on the model step only (``placement.model_step_tags``: its GPU pod on Kubernetes).
    """
    return [
        ohlcv_asset(windows, symbols),
        covariates_asset(windows),
        forecasts_asset(windows, model_op_tags),
        ml_predictions_asset(windows),
    ]


def _common(windows: Windows) -> dict:
    return dict(
        partitions_def=windows.partitions_def,
        group_name=chain_group(windows),
        backfill_policy=dg.BackfillPolicy.multi_run(windows.per_backfill_run),
    )


def ohlcv_asset(windows: Windows, symbols: list[str]) -> dg.AssetsDefinition:
    cadence = windows.cadence
    name = f"ohlcv_{cadence.name}"
    check_of = check_names(symbols)

    # A multi_asset only for can_subset: a run restricted to some symbols (InstrumentsResource.symbols)
    # leaves the other instruments' checks without a result instead of claiming they passed.
    @dg.multi_asset(
        name=name,
        outs={name: dg.AssetOut(
            io_manager_key=FRAMES_IO_MANAGER, kinds={"polars"}, dagster_type=WINDOW_FRAMES,
            description="Validated OHLCV bars per instrument that closed at or before the window's end.",
        )},
        # Not blocking: one instrument's bad bars must not stop the other instruments' forecasts.
        check_specs=[
            dg.AssetCheckSpec(check, asset=name, description=f"{symbol}'s bars pass validation (not excluded).")
            for symbol, check in check_of.items()
        ],
        can_subset=True,
        **_common(windows),
    )
    def ohlcv(
        context: dg.AssetExecutionContext,
        config: HistoryConfig,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
    ):
        """Validated OHLCV bars per instrument that closed at or before the window's end; excluded instruments are left out."""
        universe = instruments.instruments()
        source = market_data.bar_source()
        ends = windows.ends(context.partition_keys)
        result = read_window_bars(
            source, universe, cadence.name, ends, config.history_bars or cadence.context_length, config.validation()
        )
        for message in exclusion_messages(result):
            context.log.error(message)
        # Checks exist for the universe known when definitions load. Symbols outside this run's
        # selection (InstrumentsResource.symbols) were not read and get no result; a run-time symbol
        # without a check (another INSTRUMENTS_FILE) is still reported in the metadata below. They
        # come first, so a run that fails for want of anything to forecast still says which failed.
        yield from bar_check_results(result, universe, check_of)
        fail_if_nothing_to_forecast(context.partition_keys, result.empty, AllInstrumentsExcludedError)
        for reason in result.empty.values():
            context.log.error(f"{reason}; the other windows of this run go on")
        yield dg.Output(
            result.bars, output_name=name,
            metadata=window_bars_metadata(result, source.describe(), source.is_synthetic, len(universe)),
        )

    return ohlcv


def covariates_asset(windows: Windows) -> dg.AssetsDefinition:
    cadence = windows.cadence.name

    @dg.asset(
        name=f"covariates_{cadence}",
        ins={"ohlcv": dg.AssetIn(f"ohlcv_{cadence}", dagster_type=WINDOW_FRAMES)},
        io_manager_key=FRAMES_IO_MANAGER,
        dagster_type=WINDOW_FRAMES,
        kinds={"polars"},
        **_common(windows),
    )
    def covariates(ohlcv: Mapping[str, pl.DataFrame]) -> dg.Output[Mapping[str, pl.DataFrame]]:
        """Per-bar model inputs: close (target), log1p volume and relative high-low spread."""
        out = window_covariates(ohlcv)
        return dg.Output(out, metadata={"windows": len(out), "rows": out.rows()})

    return covariates


def forecasts_asset(windows: Windows, op_tags: Mapping[str, object] | None = None) -> dg.AssetsDefinition:
    cadence = windows.cadence
    name = f"chronos2_forecasts_{cadence.name}"

    @dg.asset(
        name=name,
        ins={"covariates": dg.AssetIn(f"covariates_{cadence.name}", dagster_type=WINDOW_FRAMES)},
        io_manager_key=FRAMES_IO_MANAGER,
        dagster_type=WINDOW_FRAMES,
        kinds={"pytorch"},
        pool=GPU_POOL,
        op_tags=op_tags,
        # Not blocking: an instrument that fails one is left out of the asset (and so of the stored
        # rows) and named in its metadata, while the other instruments' forecasts are written.
        check_specs=[dg.AssetCheckSpec(check, asset=name, description=text) for check, text, _ in FORECAST_CHECKS],
        **_common(windows),
    )
    def chronos2_forecasts(
        context: dg.AssetExecutionContext,
        config: ForecastConfig,
        covariates: Mapping[str, pl.DataFrame],
        instruments: InstrumentsResource,
        chronos2: Chronos2Resource,
    ):
        """Chronos-2 p10/p50/p90 close forecasts per instrument, timestamped on each instrument's trading calendar."""
        calendar_of = {i.symbol: i.calendar for i in instruments.instruments()}
        upcoming = UpcomingCloses(cadence.name)
        result = forecast_windows(
            covariates,
            lambda symbol, as_of, n: upcoming(calendar_of[symbol], as_of, n),
            chronos2.runner(cadence.name),
            config.horizon or cadence.horizon,
            config.context_length or cadence.context_length,
        )
        for message in rejection_messages(result):
            context.log.error(message)
        fail_if_nothing_to_forecast(context.partition_keys, result.empty, AllForecastsRejectedError)
        if result.prediction is not None:
            _log_prediction(context, result)
        yield dg.Output(result.forecasts, metadata=forecast_metadata(result))
        yield from forecast_check_results(result)

    return chronos2_forecasts


def _log_prediction(context: dg.AssetExecutionContext, result) -> None:
    done = result.prediction
    if done.device_run.fell_back:
        context.log.warning(f"ran on the CPU instead of the GPU: {done.device_run.reason}")
    context.log.info(
        f"forecast {result.series} series x {result.horizon} steps in {done.timings['predict_seconds']:.2f}s "
        f"on {done.model.device} ({done.device_run.model_process})"
    )


def ml_predictions_asset(windows: Windows) -> dg.AssetsDefinition:
    cadence = windows.cadence.name
    name = f"ml_predictions_{cadence}"

    @dg.asset(
        name=name,
        ins={"forecasts": dg.AssetIn(f"chronos2_forecasts_{cadence}", dagster_type=WINDOW_FRAMES)},
        # A single-window run draws its fan over the window's history, read from covariates_<cadence>.
        deps=[dg.AssetKey(f"covariates_{cadence}")],
        kinds={"postgres"},
        retry_policy=WRITE_RETRY_POLICY,
        # Materialised per window written, so a window with nothing to forecast stays missing.
        output_required=False,
        check_specs=[dg.AssetCheckSpec(
            EVERY_WINDOW_WRITTEN, asset=name,
            description="Every window of the run had something to forecast and has its rows in ml_predictions.",
        )],
        **_common(windows),
    )
    def ml_predictions(
        context: dg.AssetExecutionContext,
        forecasts: Mapping[str, pl.DataFrame],
        database: PostgresResource,
        frames_io_manager: dg.ResourceParam[PartitionedFramesIOManager],
    ):
        """Chronos-2 rows in ml_predictions (model_name 'chronos-2'), upserted in one transaction for the run's windows."""
        to_write = {window: frame for window, frame in sorted(forecasts.items()) if not frame.is_empty()}
        metadata_of = {}
        with database.connection() as conn:
            # Every window in one transaction: all of the run's rows are visible at once, or none.
            written = write_windows(conn, to_write, cadence)
            for done, (window, frame) in enumerate(to_write.items(), start=1):
                metadata_of[window] = written_window_metadata(frame, written[window], done, len(to_write), database.describe())
                if len(forecasts) == 1:
                    metadata_of[window] |= _fan(context, conn, cadence, window, frame, frames_io_manager)
        context.log.info(f"wrote {len(to_write)} of {len(forecasts)} windows")
        _release_frames(context, cadence, list(forecasts), frames_io_manager)
        if set(to_write) == set(context.partition_keys):
            # Every window of the run is written: the step's own materialisation (one per window,
            # each with its window's metadata), which Dagster stores as one batch of events.
            for window, metadata in metadata_of.items():
                context.add_asset_metadata(metadata, partition_key=window)
            yield dg.MaterializeResult(check_results=[windows_written_check(forecasts, to_write, {})])
            return
        # Some windows had nothing to forecast: only the written ones are materialised, so the
        # others stay missing (and the check below names them, with what the earlier steps recorded).
        for window, metadata in metadata_of.items():
            context.log_event(dg.AssetMaterialization(asset_key=context.asset_key, partition=window, metadata=metadata))
        yield windows_written_check(forecasts, to_write, nothing_to_forecast_reasons(context, cadence))

    return ml_predictions


def _lineage(context: dg.AssetExecutionContext) -> list[str]:
    """This run, and the runs it re-executes: whose frames this run reads and may delete."""
    run = context.run
    return list(dict.fromkeys(r for r in (run.run_id, run.parent_run_id, run.root_run_id) if r))


def _release_frames(context, cadence: str, windows: list[str], frames: PartitionedFramesIOManager) -> None:
    """The frames of the run's windows are spent once their rows are committed; older leftovers go too."""
    keys = [dg.AssetKey(f"{name}_{cadence}") for name in ("ohlcv", "covariates", "chronos2_forecasts")]
    released = frames.release(keys, windows, _lineage(context))
    swept = frames.sweep()
    context.log.info(f"deleted {released} frame files of this run's windows"
                     + (f" and {swept} older than {frames.retention_days} days" if swept else ""))


def _fan(context, conn, cadence: str, window: str, frame: pl.DataFrame, frames: PartitionedFramesIOManager) -> dict:
    """The forecast fan of a single-window run, over the window's history, as metadata.

    A backfill run draws none: one window's fan among hundreds says little, and drawing it costs
    more than writing the windows.
    """
    history = {window: frames.load_window(dg.AssetKey(f"covariates_{cadence}"), window, _lineage(context))}
    fan = fan_chart_metadata(conn, cadence, {window: frame}, history)
    if "forecast_fan_window" not in fan:
        context.log.warning(f"forecast fan not drawn ({fan['forecast_fan'].removeprefix('Not drawn: ')}); the rows are stored")
    return {key: dg.MetadataValue.md(value) if key == "forecast_fan" else value for key, value in fan.items()}


def fail_if_nothing_to_forecast(windows: list[str], empty: dict[str, str], error: type[Exception]) -> None:
    """Fail a run none of whose windows has anything to forecast.

    A scheduled run covers one window, so it fails and alerts fire. A backfill run writes every
    window that has something to forecast; only when none has does it fail, since it would write nothing.
    """
    if len(empty) < len(windows):
        return
    if len(windows) == 1:
        raise error(empty[windows[0]])
    raise error(f"none of this run's {len(windows)} windows has anything to forecast: " + " | ".join(empty.values()))
