"""Fine-tuning, shadow forecasts and the registry of one cadence in Dagster (docs/fine-tuning.md).

* ``chronos2_finetuned_<cadence>``: partitioned by training cutoff (monthly; a partition's cutoff is
  its end). Fine-tunes Chronos-2 on the instruments' bars closed before the cutoff, stores the
  checkpoint and registers it as the cadence's challenger. In the ``gpu`` pool.
* ``chronos2_challenger_forecasts_<cadence>``: per chain window, the challenger's forecasts from the
  same covariates as the champion's, written as ``chronos-2-challenger`` rows, only for windows that
  end after its cutoff. Automation runs it after each new window's covariates; a backfill over
  the windows since the cutoff gives the promotion test its evidence sooner.
* ``chronos2_registry_<cadence>``: the registry as the UI shows it (champion, challengers, the
  latest events) after each scoring run, with the check ``challenger_beats_champion``: the
  promotion test (``scoring.promotion``). Promotion itself is a recorded event:
  ``forecasting-pipeline models promote``, or this asset with ``promote_if_passed``.
"""

# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
import json
import shutil
from collections.abc import Mapping
from datetime import timedelta
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field

from forecasting_pipeline.forecasting.champion import challenger_runner
from forecasting_pipeline.forecasting.finetune import (
    TrainingParams,
    fine_tune,
    staging_dir,
    store_checkpoint,
    training_split,
)
from forecasting_pipeline.forecasting.model import load_chronos2
from forecasting_pipeline.forecasting.window_forecasts import forecast_windows
from forecasting_pipeline.market.calendars import UpcomingCloses
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.validation import ValidationConfig
from forecasting_pipeline.market.window_bars import read_window_bars
from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER, WINDOW_FRAMES
from forecasting_pipeline.orchestration.metadata import exclusion_messages, markdown_table, rejection_messages
from forecasting_pipeline.orchestration.partitions import Windows
from forecasting_pipeline.orchestration.pools import GPU_POOL
from forecasting_pipeline.orchestration.resources import (
    Chronos2Resource,
    InstrumentsResource,
    MarketDataResource,
    ModelRegistryResource,
    PostgresResource,
)
from forecasting_pipeline.orchestration.run_config import ForecastConfig
from forecasting_pipeline.scoring.promotion import ALPHA, COVERAGE_TOLERANCE, PromotionTest, evaluate_challenger
from forecasting_pipeline.storage import model_registry as registry
from forecasting_pipeline.storage.ml_predictions import CHALLENGER_MODEL_NAME, write_windows
from forecasting_pipeline.storage.model_registry import NewCheckpoint

PROMOTION_CHECK = "challenger_beats_champion"


class FineTuneConfig(dg.Config):
    mode: Literal["lora", "full"] = Field(default="lora", description="lora (adapter, merged into the weights) or full.")
    learning_rate: float = Field(default=1e-5, gt=0, description="Peak learning rate (linear decay); about 1e-5 for LoRA.")
    steps: int = Field(default=1000, ge=1, description="Optimiser steps.")
    batch_size: int = Field(default=64, ge=1, description="Series (targets + covariates) per step.")
    context_length: int | None = Field(default=None, ge=1, description="Context while training; the cadence's when unset.")
    horizon: int | None = Field(default=None, ge=1, description="Steps trained for; the cadence's when unset.")
    validation_windows: int = Field(
        default=4, ge=1, description="Held-out windows of `horizon` bars at the end of the training range, per instrument."
    )
    seed: int = Field(default=0, description="Seeds the data sampling, LoRA's initialisation and the optimiser.")
    history_bars: int | None = Field(
        default=None, ge=1, description="Bars per instrument read before the cutoff; 4 x the context length when unset."
    )
    start_from: Literal["configured", "champion"] = Field(
        default="configured",
        description="configured: fine-tune CHRONOS2_MODEL, so each challenger is one step from the published weights; "
        "champion: fine-tune the cadence's current champion.",
    )

    def params(self, windows: Windows) -> TrainingParams:
        cadence = windows.cadence
        return TrainingParams(
            mode=self.mode, learning_rate=self.learning_rate, steps=self.steps, batch_size=self.batch_size,
            context_length=self.context_length or cadence.context_length, horizon=self.horizon or cadence.horizon,
            validation_windows=self.validation_windows, seed=self.seed,
        )


def cutoff_partitions(windows: Windows) -> dg.MonthlyPartitionsDefinition:
    """Monthly training cutoffs from the month of the cadence's first window: partition ``2025-05-01`` trains
    on bars closed before 2025-06-01 00:00 UTC."""
    first = windows.partitions_def.start
    return dg.MonthlyPartitionsDefinition(start_date=first.strftime("%Y-%m-01"), timezone="UTC")


def finetune_group(windows: Windows) -> str:
    return f"chronos2_finetune_{windows.cadence.name}"


def build_finetuning(windows: Windows) -> list[dg.AssetsDefinition]:
    """The three assets of one cadence's fine-tuning: training, shadow forecasts and the registry."""
    return [finetuned_asset(windows), challenger_forecasts_asset(windows), registry_asset(windows)]


def finetuned_asset(windows: Windows) -> dg.AssetsDefinition:
    cadence = windows.cadence

    @dg.asset(
        name=f"chronos2_finetuned_{cadence.name}",
        partitions_def=cutoff_partitions(windows),
        group_name=finetune_group(windows),
        kinds={"pytorch"},
        pool=GPU_POOL,
    )
    def chronos2_finetuned(
        context: dg.AssetExecutionContext,
        config: FineTuneConfig,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
        chronos2: Chronos2Resource,
        model_registry: ModelRegistryResource,
        database: PostgresResource,
    ) -> dg.MaterializeResult:
        """A Chronos-2 checkpoint fine-tuned on bars closed before the partition's end, registered as the challenger."""
        cutoff = context.partition_time_window.end
        params = config.params(windows)
        source = market_data.bar_source()
        # Bars at or before one microsecond before the cutoff: strictly before it.
        read = read_window_bars(source, instruments.instruments(), cadence.name,
                                {"cutoff": cutoff - timedelta(microseconds=1)},
                                config.history_bars or 4 * params.context_length, ValidationConfig())
        for message in exclusion_messages(read):
            context.log.warning(f"left out of training: {message}")
        split = training_split(engineer_covariates(read.bars["cutoff"]), cutoff, params)
        for symbol, why in split.left_out.items():
            context.log.warning(f"left out of training: {symbol}: {why}")
        runner = chronos2.runner(cadence.name) if config.start_from == "champion" else chronos2.configured_runner()
        staged = staging_dir(model_registry.directory)
        try:
            done = fine_tune(runner, split, params, staged)
            path = store_checkpoint(done.path, model_registry.directory, cadence.name)
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)  # what a failed run left half-written
        # Loads as every run will (in the precision the runs' setting gives on the CPU), and names its rows.
        version = load_chronos2(str(path), dtype=chronos2.dtype).version
        with database.connection() as conn:
            checkpoint, added = registry.register(conn, NewCheckpoint(
                cadence.name, done.content_hash, version, str(path), done.base_model, done.base_revision,
                done.base_version, params.mode, split.first_bar, cutoff, params.validation_bars, split.symbols,
                params.steps, params.learning_rate, params.batch_size, params.context_length, params.horizon,
                params.seed, done.validation_loss, done.device_run.device, done.train_seconds,
            ), actor=f"dagster run {context.run_id}")
        context.log.info(f"{'registered' if added else 'already registered'} {cadence.name} checkpoint "
                         f"{checkpoint.label}: {version}")
        return dg.MaterializeResult(metadata={
            "checkpoint_id": checkpoint.id, "status": checkpoint.status, "model_version": version,
            "content_hash": done.content_hash, "path": str(path), "base": done.base_version,
            "training_from": split.first_bar.isoformat(), "training_to": cutoff.isoformat(),
            "bars": split.bars, "instruments": len(split.symbols), "left_out": json.dumps(split.left_out),
            "mode": params.mode, "steps": params.steps, "learning_rate": params.learning_rate, "seed": params.seed,
            "validation_bars_per_instrument": params.validation_bars,
            "validation_loss": done.validation_loss if done.validation_loss is not None else "none",
            "train_seconds": round(done.train_seconds, 2),
            "seconds_per_100_steps": round(100 * done.seconds_per_step, 2) if done.seconds_per_step else "n/a",
            **done.device_run.metadata(),
        })

    return chronos2_finetuned


def challenger_group(windows: Windows) -> str:
    return f"chronos2_challenger_{windows.cadence.name}"


def challenger_forecasts_asset(windows: Windows) -> dg.AssetsDefinition:
    cadence = windows.cadence

    @dg.asset(
        name=f"chronos2_challenger_forecasts_{cadence.name}",
        partitions_def=windows.partitions_def,
        group_name=challenger_group(windows),
        ins={"covariates": dg.AssetIn(
            f"covariates_{cadence.name}", input_manager_key=FRAMES_IO_MANAGER, dagster_type=WINDOW_FRAMES,
        )},
        kinds={"pytorch", "postgres"},
        pool=GPU_POOL,
        backfill_policy=dg.BackfillPolicy.multi_run(windows.per_backfill_run),
        automation_condition=dg.AutomationCondition.eager(),
    )
    def chronos2_challenger_forecasts(
        context: dg.AssetExecutionContext,
        config: ForecastConfig,
        covariates: Mapping[str, pl.DataFrame],
        instruments: InstrumentsResource,
        chronos2: Chronos2Resource,
        database: PostgresResource,
    ) -> dg.MaterializeResult:
        """The challenger's shadow forecasts (model_name 'chronos-2-challenger') from the champion's covariates."""
        found = challenger_runner(chronos2.configured_runner(), database.url, cadence.name)
        if found is None:
            context.log.info(f"no {cadence.name} challenger is registered: nothing to shadow")
            return dg.MaterializeResult(metadata={"challenger": "none", "windows_written": 0})
        checkpoint, runner = found
        after = {w: frame for w, frame in covariates.items() if windows.end_of(w) > checkpoint.training_to}
        if len(after) == len(covariates):
            after = covariates  # every window: the run's shared blocks as they are (WindowFrames)
        if len(after) < len(covariates):
            context.log.info(f"{len(covariates) - len(after)} window(s) end at or before the challenger's cutoff "
                             f"{checkpoint.training_to.isoformat()}: not out of sample, not forecast")
        calendar_of = {i.symbol: i.calendar for i in instruments.instruments()}
        upcoming = UpcomingCloses(cadence.name)
        result = forecast_windows(after, lambda symbol, as_of, n: upcoming(calendar_of[symbol], as_of, n), runner,
                                  config.horizon or cadence.horizon, config.context_length or cadence.context_length)
        for message in rejection_messages(result):
            context.log.warning(message)
        to_write = {w: frame for w, frame in sorted(result.forecasts.items()) if not frame.is_empty()}
        with database.connection() as conn:
            written = write_windows(conn, to_write, cadence.name, CHALLENGER_MODEL_NAME)
        return dg.MaterializeResult(metadata={
            "challenger": checkpoint.label, "model_version": checkpoint.model_version,
            "cutoff": checkpoint.training_to.isoformat(), "windows_written": len(written),
            "rows": sum(written.values()), "windows_before_cutoff": len(covariates) - len(after),
        })

    return chronos2_challenger_forecasts


class RegistryConfig(dg.Config):
    promote_if_passed: bool = Field(
        default=False,
        description="Promote the challenger (a recorded event) when the promotion test passes; otherwise promotion "
        "is `forecasting-pipeline models promote`.",
    )


def registry_asset(windows: Windows) -> dg.AssetsDefinition:
    cadence = windows.cadence
    name = f"chronos2_registry_{cadence.name}"

    @dg.asset(
        name=name,
        group_name=challenger_group(windows),
        deps=[dg.AssetKey(f"forecast_scores_{cadence.name}")],
        kinds={"postgres"},
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[dg.AssetCheckSpec(
            PROMOTION_CHECK, asset=name,
            description=f"The {cadence.name} challenger beats the champion out of sample: lower scaled MAE of p50 and "
            f"lower scaled quantile loss by one-sided Diebold-Mariano tests at {ALPHA:g}, p10-p90 coverage not "
            f"further from 80% by more than {COVERAGE_TOLERANCE:g}, over at least PROMOTION_MIN_FORECASTS forecasts.",
        )],
    )
    def chronos2_registry(
        context: dg.AssetExecutionContext,
        config: RegistryConfig,
        database: PostgresResource,
        model_registry: ModelRegistryResource,
    ):
        """The fine-tuned checkpoints of this cadence (champion, challenger, retired), the event log, and the promotion test."""
        with database.connection() as conn:
            conn.autocommit = True  # a promotion commits on its own, not inside this asset's reads
            challenger = registry.challenger(conn, cadence.name)
            test = None if challenger is None else evaluate_challenger(
                conn, cadence.name, cadence.bar, challenger.model_version, challenger.training_to,
                model_registry.min_forecasts)
            if config.promote_if_passed and test is not None and test.passed:
                event = registry.promote(conn, cadence.name, challenger.id, "promotion test passed",
                                               test.evidence(), actor=f"dagster run {context.run_id}")
                context.log.info(f"promoted {cadence.name} checkpoint #{event.champion_after}")
            metadata = _registry_metadata(conn, cadence.name, test)
        yield dg.MaterializeResult(metadata=metadata)
        yield _promotion_check(cadence.name, challenger, test)

    return chronos2_registry


def _registry_metadata(conn, timeframe: str, test: PromotionTest | None) -> dict[str, object]:
    found = registry.checkpoints(conn, timeframe)
    champion = next((c for c in found if c.status == registry.CHAMPION), None)
    table = pl.DataFrame(
        [(c.id, c.status, c.content_hash[:12], c.training_to.date().isoformat(), f"{c.finetune_mode}, {c.steps} steps",
          c.learning_rate, c.seed, c.validation_loss, c.created_at.isoformat(timespec="minutes"))
         for c in reversed(found)],
        schema=["id", "status", "sha256", "cutoff", "training", "lr", "seed", "validation_loss", "registered"],
        orient="row",
    )
    events = pl.DataFrame(
        [(e.id, e.action, e.checkpoint_id, e.champion_before, e.champion_after, e.forced, e.reason[:80], e.actor)
         for e in registry.events(conn, timeframe, limit=10)],
        schema=["id", "action", "checkpoint", "champion_before", "champion_after", "forced", "reason", "actor"],
        orient="row",
    )
    return {
        "champion": champion.label if champion else "the configured model (CHRONOS2_MODEL)",
        "champion_model_version": champion.model_version if champion else "see chronos-2 rows",
        "challenger": next((c.label for c in found if c.status == registry.CHALLENGER), "none"),
        "checkpoints": markdown_table(table), "events": markdown_table(events),
        "promotion_test": dg.MetadataValue.md("\n\n".join(test.lines()) if test else "no challenger"),
    }


def _promotion_check(timeframe: str, challenger, test: PromotionTest | None) -> dg.AssetCheckResult:
    if test is None:
        return dg.AssetCheckResult(
            check_name=PROMOTION_CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN,
            metadata={"challenger": "none", "why": f"no {timeframe} challenger: materialise chronos2_finetuned_{timeframe}"},
        )
    evidence = test.evidence()
    return dg.AssetCheckResult(
        check_name=PROMOTION_CHECK, passed=test.passed, severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "challenger": challenger.label, "forecasts": test.n_forecasts, "origins": test.n_origins,
            "min_forecasts": test.min_forecasts,
            "scaled_mae_p_value": (evidence["scaled_mae_test"] or {}).get("p_value", "not tested"),
            "quantile_loss_p_value": (evidence["pinball_test"] or {}).get("p_value", "not tested"),
            "champion": json.dumps(evidence["champion"]), "challenger_scores": json.dumps(evidence["challenger"]),
            "why_not": "; ".join(test.reasons) or "passed",
        },
    )


def challenger_automation(all_windows: list[Windows]) -> dg.AutomationConditionSensorDefinition:
    """Runs each cadence's shadow forecasts after the chain's covariates, and refreshes the registry after scoring."""
    return dg.AutomationConditionSensorDefinition(
        "challenger_automation",
        target=dg.AssetSelection.assets(*(
            key for w in all_windows for key in (f"chronos2_challenger_forecasts_{w.cadence.name}",
                                                 f"chronos2_registry_{w.cadence.name}")
        )),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Shadow forecasts of each new window by the registered challenger, and the registry's promotion test.",
    )
