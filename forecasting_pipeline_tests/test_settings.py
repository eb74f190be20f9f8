"""Settings: every variable read in one place, secrets only as EnvVar, bad values refused by name."""

import dagster as dg
import pytest

from forecasting_pipeline.settings import Settings, resources


def test_when_nothing_is_set_then_the_defaults_hold():
    settings = Settings.from_env({})

    hourly, daily = settings.windows()
    assert (hourly.cadence.name, hourly.partitions_def.get_first_partition_key(), hourly.per_backfill_run) == (
        "1h", "2026-01-01-00:00", 240)
    assert (daily.cadence.name, daily.partitions_def.get_first_partition_key(), daily.per_backfill_run) == (
        "1d", "2024-01-01", 120)
    assert settings.market_data_source == "sample" and settings.chronos2_model == "amazon/chronos-2"
    assert not settings.model_configured and not settings.embedded_database


def test_when_the_first_windows_move_back_then_every_default_window_key_stays_valid():
    settings = Settings.from_env({"FIRST_WINDOW_1H": "2017-01-01-00:00", "FIRST_WINDOW_1D": "2004-01-01",
                                  "WINDOWS_PER_BACKFILL_RUN_1D": "240"})
    defaults = Settings.from_env({}).windows()

    for moved, default in zip(settings.windows(), defaults, strict=True):
        some_default_keys = default.partitions_def.get_partition_keys()[:50]
        assert all(moved.partitions_def.has_partition_key(key) for key in some_default_keys)
    assert settings.windows()[1].partitions_def.get_first_partition_key() == "2004-01-01"
    assert settings.windows()[1].per_backfill_run == 240


@pytest.mark.parametrize(("env", "said"), [
    ({"FIRST_WINDOW_1D": "2010-13-01"}, "first 1d window '2010-13-01' is not a window key like '2024-01-01'"),
    ({"FIRST_WINDOW_1H": "2010-01-01"}, "first 1h window '2010-01-01' is not a window key like '2026-01-01-00:00'"),
    ({"WINDOWS_PER_BACKFILL_RUN_1H": "0"}, "WINDOWS_PER_BACKFILL_RUN_1H must be a positive whole number, got '0'"),
    ({"K8S_GPUS_PER_STEP": "1"}, "K8S_GPUS_PER_STEP take effect only with K8S_STEP_PODS=true"),
    ({"ENSEMBLE_SCHEME": "median"}, "ENSEMBLE_SCHEME must be one of grid, inverse, sqrt-inverse, got 'median'"),
    ({"ENSEMBLE_KRONOS_WAIT_MINUTES": "soon"}, "ENSEMBLE_KRONOS_WAIT_MINUTES must be a non-negative number, got 'soon'"),
    ({"ENSEMBLE_LOOKBACK": "-5"}, "ENSEMBLE_LOOKBACK must be a positive whole number, got '-5'"),
    ({"PREDICT_DEADLINE_S": "0"}, "PREDICT_DEADLINE_S must be a positive number, got '0'"),
    ({"PREDICT_MAX_QUEUED": "lots"}, "PREDICT_MAX_QUEUED must be a positive whole number, got 'lots'"),
    ({"SERVE_CHUNK_COST_CPU": "0"}, "SERVE_CHUNK_COST_CPU must be a positive whole number, got '0'"),
    ({"SERVE_PUBLIC_DASHBOARD": "maybe"}, "SERVE_PUBLIC_DASHBOARD must be true or false, got 'maybe'"),
    ({"CHRONOS2_SERVER_TIMEOUT_S": "-1"}, "CHRONOS2_SERVER_TIMEOUT_S must be a non-negative number, got '-1'"),
])
def test_when_a_setting_is_malformed_then_the_error_names_the_variable_and_value(env, said):
    with pytest.raises(ValueError) as error:
        Settings.from_env(env).windows()

    assert said in str(error.value)


def test_when_resources_are_built_then_every_secret_is_an_env_var_and_no_value_is_copied():
    env = {"DATABASE_URL": "postgresql://u:secret@db/x", "MARKET_DATA_SOURCE": "postgres",
           "MARKET_DATA_DATABASE_URL": "postgresql://u:other@bars/y"}

    built = resources(Settings.from_env(env))

    assert built["database"].url == dg.EnvVar("DATABASE_URL")
    assert built["market_data"].database_url == dg.EnvVar("MARKET_DATA_DATABASE_URL")
    assert built["chronos2"].lock_database_url == dg.EnvVar("DATABASE_URL")
    assert "secret" not in repr(built) and "other" not in repr(built)


def test_when_ensemble_settings_are_given_then_the_ensemble_resource_carries_them():
    built = resources(Settings.from_env({"ENSEMBLE_LOOKBACK": "60", "ENSEMBLE_WARMUP": "15", "ENSEMBLE_SHRINKAGE": "0",
                                         "ENSEMBLE_SCHEME": "inverse", "ENSEMBLE_KRONOS_WAIT_MINUTES": "5"}))

    ensemble = built["ensemble"]
    assert (ensemble.lookback, ensemble.warmup, ensemble.shrinkage, ensemble.scheme, ensemble.kronos_wait_minutes) == (
        60, 15, 0.0, "inverse", 5.0)
    assert "lookback=60 warmup=15 shrinkage=0" in ensemble.params().model_version()
    with pytest.raises(ValueError, match=r"ENSEMBLE_WARMUP \(30\) may not exceed ENSEMBLE_LOOKBACK \(20\)"):
        resources(Settings.from_env({"ENSEMBLE_LOOKBACK": "20", "ENSEMBLE_WARMUP": "30"}))
