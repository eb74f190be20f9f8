"""The Dagster definitions built from settings: both cadence chains, scoring, the ensemble, fine-tuning, jobs, schedules and resources."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.orchestration.ensemble_assets import automation_sensor, build_ensemble, kronos_sensor
from forecasting_pipeline.orchestration.finetune_assets import build_finetuning, challenger_automation
from forecasting_pipeline.orchestration.kronos_assets import build_kronos_batch, kronos_job, kronos_schedule
from forecasting_pipeline.orchestration.placement import model_step_tags, run_executor
from forecasting_pipeline.orchestration.schedules import chain_job, chain_schedule
from forecasting_pipeline.orchestration.scoring_assets import build_scoring, scoring_schedule
from forecasting_pipeline.settings import Settings, kronos_batch_resource, resources


def kronos_definitions(settings: Settings) -> dg.Definitions:
    """The optional Kronos batch trigger: present only when KRONOS_BATCH_URL is set."""
    if not settings.kronos_batch:
        return dg.Definitions()
    jobs = [(windows, kronos_job(windows)) for windows in settings.windows()]
    return dg.Definitions(
        assets=[asset for windows, _ in jobs for asset in build_kronos_batch(windows)],
        jobs=[job for _, job in jobs],
        schedules=[kronos_schedule(windows, job) for windows, job in jobs],
        resources={"kronos_batch": kronos_batch_resource(settings)},
    )


def ensemble_definitions(settings: Settings) -> dg.Definitions:
    """Per cadence, Kronos's rows as an external asset with its sensor, the ensemble asset, and their automation."""
    windows = settings.windows()
    wait = timedelta(minutes=settings.ensemble_kronos_wait_minutes)

    def trigger(w):
        # With Dagster triggering Kronos's batches, its rows are downstream of that trigger.
        return dg.AssetKey(f"kronos_predictions_{w.cadence.name}") if settings.kronos_batch else None

    return dg.Definitions(
        assets=[asset for w in windows for asset in build_ensemble(w, wait, trigger(w))],
        sensors=[*(kronos_sensor(w) for w in windows), automation_sensor(windows)],
    )


def finetuning_definitions(settings: Settings) -> dg.Definitions:
    """Per cadence, fine-tuning, the challenger's shadow forecasts and the registry, with their automation."""
    windows = settings.windows()
    return dg.Definitions(
        assets=[asset for w in windows for asset in build_finetuning(w)],
        sensors=[challenger_automation(windows)],
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    symbols = settings.symbols()
    windows = settings.windows()
    jobs = [(w, chain_job(w)) for w in windows]
    model_tags = model_step_tags(settings.gpu_placement)
    return dg.Definitions.merge(
        dg.Definitions(
            assets=[
                *(asset for w in windows for asset in build_chain(w, symbols, model_tags)),
                *(asset for w in windows for asset in build_scoring(w.cadence)),
            ],
            jobs=[job for _, job in jobs],
            # Each scoring schedule brings its own job (forecast_scores_<cadence>_job).
            schedules=[
                *(chain_schedule(w, job) for w, job in jobs),
                *(scoring_schedule(w.cadence) for w in windows),
            ],
            resources=resources(settings),
            # One process per run; one pod per step only on Kubernetes with K8S_STEP_PODS (placement.py).
            executor=run_executor(settings.k8s_step_pods),
        ),
        ensemble_definitions(settings),
        finetuning_definitions(settings),
        kronos_definitions(settings),
    )
