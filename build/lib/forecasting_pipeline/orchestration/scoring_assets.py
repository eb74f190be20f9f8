"""The scoring asset of one cadence, its two canary checks, and its own job and schedule.

``forecast_scores_<cadence>`` scores every model found in ``ml_predictions`` (and the two
baselines) on every forecast whose whole horizon has been realised, within a lookback (hourly:
90 days by default) because each run rereads what it scores, and rewrites the cadence's rows of
``forecast_scores``. It is unpartitioned (it pools all windows) and outside the ``gpu``
pool, in a group and job of its own: the forecast chain's job is partitioned by window and
must not wait for, or re-run, scoring. The work is in ``evaluation`` and ``scoring``.
"""

# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
from datetime import datetime, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.market.calendars import bar_duration
from forecasting_pipeline.orchestration.metadata import markdown_table, png_metadata
from forecasting_pipeline.orchestration.resources import (
    InstrumentsResource,
    MarketDataResource,
    PostgresResource,
)
from forecasting_pipeline.scoring.evaluation import (
    CANARY_RECENT_DATES,
    bars_to_read,
    complete_as_of,
    evaluate,
    read_all_forecasts,
    replace_scores,
    scoring_since,
)
from forecasting_pipeline.scoring.scores import (
    CANARY_DEADBAND,
    CANARY_PERSIST,
    CANARY_WINDOW,
    COVERAGE_ALARM_ALPHA,
    COVERAGE_ALARM_MIN_OBS,
    ROLLING_COVERAGE_WINDOW,
)
from forecasting_pipeline.serving.plots import rolling_scores_png
from forecasting_pipeline.times import parse_utc

# Days of forecasts each run scores, unless its run config says otherwise (None: all of them).
# Scoring rereads what it scores, so the hourly cadence pools a bounded span (README: Reading the scores).
DEFAULT_LOOKBACK_DAYS: dict[str, int | None] = {"1h": 90, "1d": None}

SIGN_FLIP_CHECK = "loss_difference_sign_stable"
COVERAGE_CHECK = "band_coverage_kupiec"


class ScoresConfig(dg.Config):
    until: str | None = Field(
        default=None,
        description="Score against bars closed at or before this UTC time (ISO 8601); now when unset.",
    )
    lookback_days: int | None = Field(
        default=None, ge=0,
        description=(
            "Score the forecasts made in this many days before `until` (Kronos rows: created in them). "
            "Unset: the cadence's default (1h: 90 days, 1d: every forecast). 0: every stored forecast."
        ),
    )


def _until(config: ScoresConfig) -> datetime:
    if not config.until:
        return datetime.now(timezone.utc)
    return parse_utc(config.until)


def _flip_json(flip) -> dict:
    return {
        "started_at": flip.started_at.isoformat() if flip.started_at else None,
        "confirmed_at": flip.confirmed_at.isoformat() if flip.confirmed_at else None,
        "from_sign": flip.from_sign,
        "to_sign": flip.to_sign,
        "rolling_diff": round(flip.value, 6),
    }


def build_scoring(cadence: Cadence) -> list[dg.AssetsDefinition]:
    """The scoring asset of one cadence, with its two WARN-severity canary checks."""
    c = cadence.name
    name = f"forecast_scores_{c}"

    @dg.asset(
        name=name,
        group_name=name,
        deps=[dg.AssetKey(f"ml_predictions_{c}")],
        kinds={"polars", "postgres"},
        check_specs=[
            dg.AssetCheckSpec(
                SIGN_FLIP_CHECK, asset=name,
                description=(
                    "The rolling loss difference between chronos-2 and kronos-base (or the random walk when "
                    f"Kronos has no scored forecasts) has not flipped sign within the last {CANARY_RECENT_DATES} "
                    f"forecast dates (window {CANARY_WINDOW}, persistence {CANARY_PERSIST}, deadband {CANARY_DEADBAND})."
                ),
            ),
            dg.AssetCheckSpec(
                COVERAGE_CHECK, asset=name,
                description=(
                    f"Each stored model's p10-p90 coverage over its last {ROLLING_COVERAGE_WINDOW} forecast dates "
                    f"passes Kupiec's test at {COVERAGE_ALARM_ALPHA} (from {COVERAGE_ALARM_MIN_OBS} observations)."
                ),
            ),
        ],
    )
    def forecast_scores(
        context: dg.AssetExecutionContext,
        config: ScoresConfig,
        database: PostgresResource,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
    ):
        """Scores of every stored model and both baselines against realised closes, per instrument and horizon step."""
        until = _until(config)
        lookback = config.lookback_days if config.lookback_days is not None else DEFAULT_LOOKBACK_DAYS[cadence.name]
        since = scoring_since(until, lookback)
        with database.connection() as conn:
            stored = read_all_forecasts(conn, c, since=since)
        if stored.is_empty():
            bars = pl.DataFrame(schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "close": pl.Float64})
            unreadable: dict[str, str] = {}
        else:
            first = stored["as_of"].drop_nulls().min() or stored["ts"].min()
            n_bars = bars_to_read(first, until, bar_duration(c))
            universe = [i for i in instruments.instruments() if i.symbol in set(stored["symbol"].to_list())]
            bars, unreadable = market_data.bar_source().bars(universe, c, until, n_bars)
            for symbol, reason in unreadable.items():
                context.log.warning(f"{symbol}: bars unreadable, its forecasts are not scored: {reason}")
        forecasts, without_as_of = complete_as_of(stored, bars)
        del stored  # at 90 days of hourly forecasts, a 170 MB copy that evaluate does not need
        result = evaluate(forecasts, bars, without_as_of=without_as_of)

        written = 0
        if result.scores.height:
            with database.connection() as conn:
                written = replace_scores(conn, c, result.scores, until)
        else:
            context.log.info("no forecast has a fully realised horizon yet; forecast_scores left as it was")
        context.log.info(f"scored {result.forecasts_scored} forecasts through {until.isoformat()}; {written} score rows")

        metadata = {
            "scored_through": until.isoformat(),
            "scored_since": since.isoformat() if since else "every stored forecast",
            "rows": written,
            "forecasts_scored": dg.MetadataValue.json(result.forecasts_scored),
            "forecasts_awaiting_realisation": dg.MetadataValue.json(result.forecasts_pending),
            "forecasts_without_as_of": dg.MetadataValue.json(result.forecasts_without_as_of),
            "unreadable_bars": dg.MetadataValue.json(unreadable),
            "source": market_data.bar_source().describe(),
            "database": database.describe(),
        }
        if result.summary.height:
            metadata["summary"] = markdown_table(result.summary.select(
                "model_name", "levels", "n", "n_symbols", "mean_pinball", "pinball_p50", "coverage_p10_p90",
                "below_p10_rate", "above_p90_rate", "relative_mae", "kupiec_p_value",
            ))
            per_symbol = (
                result.scores.group_by("model_name", "symbol")
                .agg(pl.col("n").sum(), (pl.col("mean_pinball") * pl.col("n")).sum() / pl.col("n").sum(),
                     (pl.col("scaled_mae").sum() / pl.col("scaled_rw_mae").sum()).alias("relative_mae"))
                .sort("symbol", "model_name")
            )
            metadata["by_symbol"] = markdown_table(per_symbol, max_rows=200)
        plotted = result.rolling.filter(pl.col("value").is_not_null()) if result.rolling.height else result.rolling
        if plotted.height:
            png = rolling_scores_png(plotted, title=f"{c} forecasts: rolling coverage and error relative to the random walk")
            metadata["rolling_scores"] = png_metadata(png, f"rolling scores, {c}")
        yield dg.MaterializeResult(metadata=metadata)

        canary = result.loss_canary
        yield dg.AssetCheckResult(
            check_name=SIGN_FLIP_CHECK,
            passed=canary is None or not canary.fired,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "compared": f"{canary.model_a} - {canary.model_b}" if canary else "no two models share scored forecasts",
                "loss": canary.loss_column if canary else "",
                "latest_rolling_diff": (
                    float(canary.comparison["rolling_diff"].drop_nulls()[-1])
                    if canary and canary.comparison["rolling_diff"].drop_nulls().len() else None
                ),
                "forecast_dates": canary.comparison.height if canary else 0,
                "recent_flips": dg.MetadataValue.json([_flip_json(f) for f in canary.recent] if canary else []),
                "all_flips": dg.MetadataValue.json([_flip_json(f) for f in canary.flips] if canary else []),
            },
        )
        failing = {m: a for m, a in result.coverage_alarms.items() if a.fired}
        yield dg.AssetCheckResult(
            check_name=COVERAGE_CHECK,
            passed=not failing,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "failing_models": dg.MetadataValue.json(sorted(failing)),
                "models": dg.MetadataValue.json({
                    m: {"n_obs": a.n_obs, "n_fail": a.n_fail, "observed_fail_rate": round(a.observed_rate, 6),
                        "expected_fail_rate": a.expected_rate, "kupiec_p_value": a.p_value,
                        "enough_data": a.enough_data}
                    for m, a in result.coverage_alarms.items()
                }),
            },
        )

    return [forecast_scores]


def scoring_job(cadence: Cadence):
    """The job that materialises one cadence's scoring asset (and its checks)."""
    return dg.define_asset_job(
        name=f"forecast_scores_{cadence.name}_job",
        selection=dg.AssetSelection.groups(f"forecast_scores_{cadence.name}"),
        description=f"Scores every model's realised {cadence.name} forecasts against the market data and baselines.",
    )


def scoring_schedule(cadence: Cadence) -> dg.ScheduleDefinition:
    """Daily at 06:15 UTC, after the 05:45 daily forecast run; hourly forecasts are scored once a day too."""
    return dg.ScheduleDefinition(
        name=f"forecast_scores_{cadence.name}_schedule",
        job=scoring_job(cadence),
        cron_schedule="15 6 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
