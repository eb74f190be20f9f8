"""The ensemble of one cadence in Dagster: Kronos's rows as an external asset, its sensor, and the ensemble asset.

* ``kronos_base_<cadence>``: Kronos's rows in ``ml_predictions``, written by Kronos itself. The
  sensor ``kronos_base_<cadence>_sensor`` records an observation of a window once Kronos has
  forecast every instrument from the window's origins, or once the chain's rows of that window
  are older than the wait (``ENSEMBLE_KRONOS_WAIT_MINUTES``), saying how many it has.
* ``ensemble_forecasts_<cadence>``: the ensemble rows of each window, downstream of the chain's
  ``ml_predictions_<cadence>`` and of ``kronos_base_<cadence>``. Declarative automation
  materialises a recent window once both are in for it. It calls no model, so it is outside the
  ``gpu`` pool. The work is ``ensemble.window_ensembles``.
"""

# No `from __future__ import annotations` here: Dagster reads these annotations (config, resources) at decoration time.
import json
from datetime import datetime, timedelta, timezone
from typing import Literal

import dagster as dg
from pydantic import Field

from forecasting_pipeline.ensemble.members import KronosWindow, kronos_windows
from forecasting_pipeline.ensemble.window_ensembles import EnsembleParams, ensemble_windows, write_run
from forecasting_pipeline.orchestration.metadata import (
    EVERY_WINDOW_COMBINED,
    ensemble_window_metadata,
    kronos_observation_metadata,
    missing_member_messages,
    windows_combined_check,
)
from forecasting_pipeline.orchestration.partitions import Windows
from forecasting_pipeline.orchestration.resources import InstrumentsResource, MarketDataResource, PostgresResource

# An ensemble backfill run covers this many times the chain's windows per run.
ENSEMBLE_RUN_FACTOR = 4

# The tag Dagster reads an observation's data version from (dagster._core.definitions.data_version.DATA_VERSION_TAG).
DATA_VERSION_TAG = "dagster/data_version"


class EnsembleResource(dg.ConfigurableResource):
    """How the ensemble weighs its members, and how long it waits for Kronos (docs/ensemble.md)."""

    lookback: int = Field(default=120, description="Scored forecasts per instrument behind its weights and band (ENSEMBLE_LOOKBACK).")
    warmup: int = Field(default=20, description="Scored forecasts before weights leave equal and the band is calibrated (ENSEMBLE_WARMUP).")
    shrinkage: float = Field(default=60.0, description="Pseudo-count shrinking an instrument's weights toward the pooled ones (ENSEMBLE_SHRINKAGE).")
    scheme: Literal["grid", "inverse", "sqrt-inverse"] = Field(
        default="grid", description="grid: best point of a simplex grid on recent losses; inverse / sqrt-inverse: loss**-1 / loss**-0.5 (ENSEMBLE_SCHEME).",
    )
    band: Literal["adaptive", "recent"] = Field(
        default="adaptive", description="The band's calibration: adaptive (out of sample, per horizon group, tracked online) "
        "or recent (the former rule: pooled over steps, on the weights' own span) (ENSEMBLE_BAND).",
    )
    band_window: int = Field(default=30, description="Scored forecasts behind the band's starting factors, and as many "
                             "again that move them online (ENSEMBLE_BAND_WINDOW).")
    band_gamma: float = Field(default=1.0, description="How far one scored forecast moves a band factor, on the log scale "
                              "(ENSEMBLE_BAND_GAMMA).")
    band_groups: int = Field(default=3, description="Horizon groups with band factors of their own (ENSEMBLE_BAND_GROUPS).")
    kronos_wait_minutes: float = Field(
        default=30.0, description="After the chain's rows of a window, how long to wait for Kronos's before combining without it "
        "(ENSEMBLE_KRONOS_WAIT_MINUTES).",
    )

    def params(self) -> EnsembleParams:
        return EnsembleParams(lookback=self.lookback, warmup=self.warmup, shrinkage=self.shrinkage, scheme=self.scheme,
                              band=self.band, band_window=self.band_window, band_gamma=self.band_gamma,
                              band_groups=self.band_groups)


def ensemble_group(windows: Windows) -> str:
    return f"ensemble_{windows.cadence.name}"


def kronos_asset_key(windows: Windows) -> dg.AssetKey:
    return dg.AssetKey(f"kronos_base_{windows.cadence.name}")


def ensemble_asset_key(windows: Windows) -> dg.AssetKey:
    return dg.AssetKey(f"ensemble_forecasts_{windows.cadence.name}")


def kronos_version(kronos: KronosWindow) -> dg.DataVersion:
    """The data version of one window of Kronos's rows: which instruments it has forecast, and the newest row's time."""
    newest = kronos.newest_written_at.isoformat() if kronos.newest_written_at else "none"
    return dg.DataVersion(f"{len(kronos.written)}/{len(kronos.written) + len(kronos.not_written)} newest {newest}")


def kronos_observation(windows: Windows, kronos: KronosWindow, chain_at: datetime | None,
                       wait: timedelta | None) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=kronos_asset_key(windows), partition=kronos.window,
        metadata=kronos_observation_metadata(kronos, chain_at, wait),
        tags={DATA_VERSION_TAG: kronos_version(kronos).value},
    )


def kronos_base_asset(windows: Windows, trigger: dg.AssetKey | None = None) -> dg.AssetsDefinition:
    """Kronos's rows of one cadence: written by Kronos (after its batch trigger, when Dagster holds one), observed per window."""
    cadence = windows.cadence.name
    spec = dg.AssetSpec(
        kronos_asset_key(windows),
        partitions_def=windows.partitions_def,
        group_name=ensemble_group(windows),
        kinds={"postgres"},
        deps=[trigger] if trigger else None,
        description=(
            f"Kronos's {cadence} rows in ml_predictions (model_name 'kronos-base'), written by Kronos. Its sensor "
            "records an observation of a window once every instrument is in, or once the wait after the chain is over."
        ),
    )

    @dg.multi_observable_source_asset(name=f"kronos_base_{cadence}", specs=[spec], partitions_def=windows.partitions_def)
    def kronos_base(context, database: PostgresResource, instruments: InstrumentsResource):
        """Observing by hand (the UI's Observe): which instruments Kronos has forecast in each window of the run."""
        with database.connection() as conn:
            found = kronos_windows(conn, cadence, instruments.instruments(), windows.ends(context.partition_keys))
        if len(found) == 1:
            [kronos] = found.values()
            yield dg.ObserveResult(asset_key=spec.key, data_version=kronos_version(kronos),
                                   metadata=kronos_observation_metadata(kronos, None, None))
            return
        for kronos in found.values():
            context.log_event(kronos_observation(windows, kronos, None, None))

    return kronos_base


def ensemble_condition(windows: Windows, wait: timedelta) -> dg.AutomationCondition:
    """``eager`` over the recent windows: both producers in for the window (the sensor settles Kronos's side)."""
    # Recent windows, not only the latest: an hourly window's wait for Kronos outlasts the hour.
    recent = wait + 2 * windows.cadence.bar
    return (
        dg.AutomationCondition.in_latest_time_window(recent)
        & (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("chain and Kronos in for the window")


def build_ensemble(windows: Windows, wait: timedelta, trigger: dg.AssetKey | None = None) -> list[dg.AssetsDefinition]:
    """Kronos's observed rows and the ensemble asset of one cadence."""
    return [kronos_base_asset(windows, trigger), ensemble_asset(windows, wait)]


def ensemble_asset(windows: Windows, wait: timedelta) -> dg.AssetsDefinition:
    cadence = windows.cadence
    name = ensemble_asset_key(windows).to_user_string()

    @dg.asset(
        name=name,
        partitions_def=windows.partitions_def,
        group_name=ensemble_group(windows),
        deps=[dg.AssetKey(f"ml_predictions_{cadence.name}"), kronos_asset_key(windows)],
        kinds={"polars", "postgres"},
        # Runs of its own in a backfill, never inside a chain run: ml_predictions_<cadence> records its windows
        # as events rather than an output, and a step downstream of a missing output is skipped. A policy that
        # differs from the chain's keeps the daemon from grouping them; the ensemble costs milliseconds per window.
        backfill_policy=dg.BackfillPolicy.multi_run(ENSEMBLE_RUN_FACTOR * windows.per_backfill_run),
        automation_condition=ensemble_condition(windows, wait),
        # Materialised per window written, like ml_predictions_<cadence>.
        output_required=False,
        check_specs=[dg.AssetCheckSpec(
            EVERY_WINDOW_COMBINED, asset=name,
            description="Every window of the run has an ensemble forecast of every instrument that has a member forecast.",
        )],
    )
    def ensemble_forecasts(
        context: dg.AssetExecutionContext,
        database: PostgresResource,
        instruments: InstrumentsResource,
        market_data: MarketDataResource,
        ensemble: EnsembleResource,
    ):
        """Ensemble rows in ml_predictions (model_name 'ensemble'): Chronos-2, Kronos and the volatility-band random walk, weighted by recent scores."""
        keys = context.partition_keys
        with database.connection() as conn:
            run = ensemble_windows(conn, cadence, market_data.bar_source(), instruments.instruments(),
                                   windows.ends(keys), ensemble.params())
            written = write_run(conn, run)
        for line in missing_member_messages(run):
            context.log.warning(line)
        for window in sorted(written):
            context.log_event(dg.AssetMaterialization(
                asset_key=context.asset_key, partition=window,
                metadata=ensemble_window_metadata(run, window, written[window], database.describe()),
            ))
        context.log.info(f"combined {len(written)} of {len(keys)} windows ({run.model_version})")
        if not written:
            raise dg.Failure(f"no window of this run has anything to combine: {json.dumps(run.left_out)[:2000]}")
        yield windows_combined_check(run, keys)

    return ensemble_forecasts


def kronos_sensor(windows: Windows) -> dg.SensorDefinition:
    """Records an observation of ``kronos_base_<cadence>`` for each recent window once Kronos is in, or late."""
    cadence = windows.cadence.name
    chain_key = dg.AssetKey(f"ml_predictions_{cadence}")

    @dg.sensor(
        name=f"kronos_base_{cadence}_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Observes Kronos's {cadence} rows per window, so the ensemble runs once Kronos is in or the wait is over.",
    )
    def kronos_base_sensor(
        context: dg.SensorEvaluationContext,
        database: PostgresResource,
        instruments: InstrumentsResource,
        ensemble: EnsembleResource,
    ) -> dg.SensorResult:
        now = datetime.now(timezone.utc)
        wait = timedelta(minutes=ensemble.kronos_wait_minutes)
        recent = _recent_windows(windows, now, wait)
        observed: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        chain_at = _materialised_at(context.instance, chain_key, recent)
        with database.connection() as conn:
            found = kronos_windows(conn, cadence, instruments.instruments(), windows.ends(recent))
        events = []
        for window, kronos in found.items():
            version = kronos_version(kronos).value
            waited = window in chain_at and now - chain_at[window] >= wait
            # First once Kronos is in or the wait is over; after that, whenever more of its rows arrive.
            settled = kronos.complete or waited if window not in observed else observed[window] != version
            if settled:
                events.append(kronos_observation(windows, kronos, chain_at.get(window), wait))
                observed[window] = version
        cursor = {window: version for window, version in observed.items() if window in recent}
        return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor, sort_keys=True))

    return kronos_base_sensor


def _recent_windows(windows: Windows, now: datetime, wait: timedelta) -> list[str]:
    """The complete windows that ended within the automation's reach of ``now``."""
    reach = wait + 3 * windows.cadence.bar
    keys = windows.partitions_def.get_partition_keys_in_time_window(dg.TimeWindow(now - reach - windows.cadence.bar, now))
    return [k for k in keys if now - reach <= windows.end_of(k) <= now]


def _materialised_at(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]) -> dict[str, datetime]:
    """When each partition of ``key`` was last materialised."""
    if not partitions:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=len(partitions) * 20,
    ).records
    out: dict[str, datetime] = {}
    for record in records:
        at = datetime.fromtimestamp(record.timestamp, timezone.utc)
        partition = record.partition_key
        if partition is not None and (partition not in out or at > out[partition]):
            out[partition] = at
    return out


def automation_sensor(all_windows: list[Windows]) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the ensemble assets' automation conditions; running by default, like the chain's schedules."""
    return dg.AutomationConditionSensorDefinition(
        "ensemble_automation",
        target=dg.AssetSelection.assets(*(ensemble_asset_key(w) for w in all_windows)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Materialises each cadence's ensemble for a recent window once the chain and Kronos are in for it.",
    )
