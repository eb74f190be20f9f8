"""The scoring asset of one cadence, its two canary checks, and its own job and schedule.

``forecast_scores_<cadence>`` adds to the stored scores every forecast (of every model found in
``ml_predictions``, and the two baselines) whose whole horizon has been realised since its last
run, then reviews what is stored: the summary, the rolling chart and the two canaries. It is
unpartitioned (scores pool all windows) and outside the ``gpu`` pool, in a group and job of its
own: the forecast chain's job is partitioned by window and must not wait for, or re-run,
scoring. The work is in ``scoring.evaluation``; the metadata in ``metadata``.
"""

# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
from datetime import datetime, timedelta, timezone

import dagster as dg
from pydantic import Field

from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.orchestration.metadata import (
    coverage_check_result,
    ensemble_check_result,
    scoring_metadata,
    sign_flip_check_result,
)
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource
from forecasting_pipeline.scoring.canaries import CANARY_DEADBAND, CANARY_PERSIST, CANARY_RECENT_DATES, CANARY_WINDOW
from forecasting_pipeline.scoring.coverage import COVERAGE_ALARM_ALPHA, COVERAGE_ALARM_MIN_OBS
from forecasting_pipeline.scoring.evaluation import DEFAULT_REVIEW_SPAN, review_scores, score_new_forecasts
from forecasting_pipeline.scoring.rolling import ROLLING_WINDOW
from forecasting_pipeline.times import parse_utc

SIGN_FLIP_CHECK = "loss_difference_sign_stable"
COVERAGE_CHECK = "band_coverage_kupiec"
ENSEMBLE_CHECK = "ensemble_not_worse_than_best_member"


class ScoresConfig(dg.Config):
    until: str | None = Field(
        default=None,
        description=(
            "Score against bars closed at or before this UTC time (ISO 8601); now when unset. It may not be "
            "earlier than the stored scores' scored_through unless `rebuild` is set."
        ),
    )
    rebuild: bool = Field(
        default=False,
        description=(
            "Discard this cadence's stored scores and per-forecast losses and rescore every stored forecast "
            "from scratch, in one transaction (readers keep the old scores until it commits)."
        ),
    )
    review_days: int | None = Field(
        default=None, ge=0,
        description=(
            "Days of per-forecast losses, back from the newest forecast scored, behind the rolling chart and "
            "the two canaries. Unset: the cadence's default (1h: 90 days, 1d: all). 0: all. The scores and "
            "the summary always cover every forecast scored."
        ),
    )


def _until(config: ScoresConfig) -> datetime:
    return parse_utc(config.until) if config.until else datetime.now(timezone.utc)


def _review_span(config: ScoresConfig, cadence: Cadence) -> timedelta | None:
    if config.review_days is None:
        return DEFAULT_REVIEW_SPAN[cadence.name]
    return timedelta(days=config.review_days) if config.review_days else None


def _check_specs(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            SIGN_FLIP_CHECK, asset=asset_name,
            description=(
                "The rolling loss difference between chronos-2 and kronos-base (or the random walk when "
                f"Kronos has no scored forecasts) has not flipped sign within the last {CANARY_RECENT_DATES} "
                f"forecast dates (window {CANARY_WINDOW}, persistence {CANARY_PERSIST}, deadband {CANARY_DEADBAND})."
            ),
        ),
        dg.AssetCheckSpec(
            COVERAGE_CHECK, asset=asset_name,
            description=(
                f"Each stored model's p10-p90 coverage over its last {ROLLING_WINDOW} forecast dates "
                f"passes Kupiec's test at {COVERAGE_ALARM_ALPHA} (from {COVERAGE_ALARM_MIN_OBS} observations)."
            ),
        ),
        dg.AssetCheckSpec(
            ENSEMBLE_CHECK, asset=asset_name,
            description=(
                "The ensemble's rolling loss (window " f"{CANARY_WINDOW}) has not been above its best member's by more "
                f"than {CANARY_DEADBAND} for the last {CANARY_PERSIST} forecast dates (best: lowest scaled MAE of p50; "
                "compared on mean pinball when that member has a band)."
            ),
        ),
    ]


def build_scoring(cadence: Cadence) -> list[dg.AssetsDefinition]:
    """The scoring asset of one cadence, with its two WARN-severity canary checks."""
    asset_name = f"forecast_scores_{cadence.name}"

    @dg.asset(
        name=asset_name,
        group_name=asset_name,
        deps=[dg.AssetKey(f"ml_predictions_{cadence.name}"), dg.AssetKey(f"ensemble_forecasts_{cadence.name}")],
        kinds={"polars", "postgres"},
        check_specs=_check_specs(asset_name),
    )
    def forecast_scores(
        context: dg.AssetExecutionContext,
        config: ScoresConfig,
        database: PostgresResource,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
    ):
        """Scores of every stored model and both baselines against realised closes, per instrument and horizon step."""
        source = market_data.bar_source()
        with database.connection() as conn:
            run = score_new_forecasts(
                conn, cadence, source, instruments.instruments(), _until(config), rebuild=config.rebuild
            )
            review = review_scores(conn, cadence.name, _review_span(config, cadence))
        context.log.info(
            f"scored {run.scored} new forecasts through {run.until.isoformat()}"
            + (f"; rebuilt from scratch ({run.rebuild_reason})" if run.rebuild_reason else "")
        )
        yield dg.MaterializeResult(metadata=scoring_metadata(run, review, source.describe(), database.describe()))
        yield sign_flip_check_result(SIGN_FLIP_CHECK, review.loss_canary)
        yield coverage_check_result(COVERAGE_CHECK, review.coverage_alarms)
        yield ensemble_check_result(ENSEMBLE_CHECK, review.ensemble_canary)

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
