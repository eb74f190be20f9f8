"""Settings: every variable read in one place, secrets only as EnvVar, bad values refused by name."""

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.settings import (
    GROUPS,
    OTHER_VARIABLES,
    VARIABLES,
    Secret,
    Settings,
    SettingsError,
    resources,
)

REPO = Path(__file__).resolve().parents[1]


def test_when_nothing_is_set_then_the_defaults_hold():
    settings = Settings.from_env({})

    hourly, daily = settings.windows()
    assert (hourly.cadence.name, hourly.partitions_def.get_first_partition_key(), hourly.per_backfill_run) == (
        "1h", "2026-01-01-00:00", 480)
    assert (daily.cadence.name, daily.partitions_def.get_first_partition_key(), daily.per_backfill_run) == (
        "1d", "2024-01-01", 480)
    assert settings.market_data_source == "sample" and settings.chronos2_model == "amazon/chronos-2"
    assert not settings.model_configured and not settings.embedded_database
    assert (settings.chronos2_dtype, settings.gpu_resident) == ("auto", False)
    assert settings.frames_retention_days == 7


def test_when_a_frame_retention_is_set_then_the_frames_io_manager_keeps_leftovers_that_long():
    built = resources(Settings.from_env({"FRAMES_RETENTION_DAYS": "2", "FRAMES_DIR": "/shared/frames"}))

    assert (built["frames_io_manager"].base_dir, built["frames_io_manager"].retention_days) == ("/shared/frames", 2)


def test_when_the_first_windows_move_back_then_every_default_window_key_stays_valid():
    settings = Settings.from_env({"FIRST_WINDOW_1H": "2017-01-01-00:00", "FIRST_WINDOW_1D": "2004-01-01",
                                  "WINDOWS_PER_BACKFILL_RUN_1D": "120"})
    defaults = Settings.from_env({}).windows()

    for moved, default in zip(settings.windows(), defaults, strict=True):
        some_default_keys = default.partitions_def.get_partition_keys()[:50]
        assert all(moved.partitions_def.has_partition_key(key) for key in some_default_keys)
    assert settings.windows()[1].partitions_def.get_first_partition_key() == "2004-01-01"
    assert settings.windows()[1].per_backfill_run == 120


@pytest.mark.parametrize(("env", "said"), [
    ({"FIRST_WINDOW_1D": "2010-13-01"}, "FIRST_WINDOW_1D must be a 1d window key like '2024-01-01', got '2010-13-01'"),
    ({"FIRST_WINDOW_1H": "2010-01-01"},
     "FIRST_WINDOW_1H must be a 1h window key like '2026-01-01-00:00', got '2010-01-01'"),
    ({"WINDOWS_PER_BACKFILL_RUN_1H": "0"}, "WINDOWS_PER_BACKFILL_RUN_1H must be a positive whole number, got '0'"),
    ({"K8S_GPUS_PER_STEP": "1"}, "K8S_GPUS_PER_STEP take effect only with K8S_STEP_PODS=true"),
    ({"ENSEMBLE_SCHEME": "median"}, "ENSEMBLE_SCHEME must be one of grid, inverse, sqrt-inverse, got 'median'"),
    ({"ENSEMBLE_KRONOS_WAIT_MINUTES": "soon"}, "ENSEMBLE_KRONOS_WAIT_MINUTES must be a non-negative number, got 'soon'"),
    ({"ENSEMBLE_LOOKBACK": "-5"}, "ENSEMBLE_LOOKBACK must be a positive whole number, got '-5'"),
    ({"CHRONOS2_DTYPE": "float16"}, "CHRONOS2_DTYPE must be one of auto, float32, bfloat16, got 'float16'"),
    ({"CHRONOS2_GPU_RESIDENT": "sometimes"}, "CHRONOS2_GPU_RESIDENT must be true or false, got 'sometimes'"),
    ({"FRAMES_RETENTION_DAYS": "0"}, "FRAMES_RETENTION_DAYS must be a positive whole number, got '0'"),
    ({"PREDICT_DEADLINE_S": "0"}, "PREDICT_DEADLINE_S must be a positive number, got '0'"),
    ({"PREDICT_MAX_QUEUED": "lots"}, "PREDICT_MAX_QUEUED must be a positive whole number, got 'lots'"),
    ({"SERVE_CHUNK_COST_CPU": "0"}, "SERVE_CHUNK_COST_CPU must be a positive whole number, got '0'"),
    ({"SERVE_PUBLIC_DASHBOARD": "maybe"}, "SERVE_PUBLIC_DASHBOARD must be true or false, got 'maybe'"),
    ({"CHRONOS2_SERVER_TIMEOUT_S": "-1"}, "CHRONOS2_SERVER_TIMEOUT_S must be a positive number, got '-1'"),
    ({"ENSEMBLE_BAND": "static"}, "ENSEMBLE_BAND must be one of adaptive, recent, got 'static'"),
    ({"ENSEMBLE_BAND_GAMMA": "-0.1"}, "ENSEMBLE_BAND_GAMMA must be a number from 0 to 2.0, got '-0.1'"),
    ({"ENSEMBLE_BAND_GROUPS": "0"}, "ENSEMBLE_BAND_GROUPS must be a positive whole number, got '0'"),
    ({"ENSEMBLE_BAND_WINDOW": "ten"}, "ENSEMBLE_BAND_WINDOW must be a positive whole number, got 'ten'"),
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
                                         "ENSEMBLE_SCHEME": "inverse", "ENSEMBLE_KRONOS_WAIT_MINUTES": "5",
                                         "ENSEMBLE_BAND_WINDOW": "40", "ENSEMBLE_BAND_GAMMA": "0.05",
                                         "ENSEMBLE_BAND_GROUPS": "4"}))

    ensemble = built["ensemble"]
    assert (ensemble.lookback, ensemble.warmup, ensemble.shrinkage, ensemble.scheme, ensemble.kronos_wait_minutes) == (
        60, 15, 0.0, "inverse", 5.0)
    assert (ensemble.band, ensemble.band_window, ensemble.band_gamma, ensemble.band_groups) == ("adaptive", 40, 0.05, 4)
    assert "lookback=60 warmup=15 shrinkage=0, band=adaptive conformal p10-p90 window=40 gamma=0.05 groups=4" in (
        ensemble.params().model_version())
    assert "band=recent" in resources(Settings.from_env({"ENSEMBLE_BAND": "recent"}))["ensemble"].params().model_version()
    with pytest.raises(ValueError, match=r"ENSEMBLE_WARMUP \(30\) may not exceed ENSEMBLE_LOOKBACK \(20\)"):
        resources(Settings.from_env({"ENSEMBLE_LOOKBACK": "20", "ENSEMBLE_WARMUP": "30"}))
    with pytest.raises(ValueError, match=r"ENSEMBLE_WARMUP \(30\) may not exceed ENSEMBLE_BAND_WINDOW \(25\)"):
        resources(Settings.from_env({"ENSEMBLE_WARMUP": "30", "ENSEMBLE_BAND_WINDOW": "25"}))
    with pytest.raises(ValueError, match="ENSEMBLE_BAND_GAMMA must be a number from 0 to 2.0, got .3."):
        resources(Settings.from_env({"ENSEMBLE_BAND_GAMMA": "3"}))


def test_when_a_variable_is_declared_then_it_has_a_name_a_meaning_and_a_section():
    for name, field in Settings.model_fields.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", field.alias), name
        assert field.description and field.description.endswith("."), field.alias
        assert field.json_schema_extra["group"] in GROUPS, field.alias
    assert len(VARIABLES) == len(Settings.model_fields)
    assert not {v.name for v in OTHER_VARIABLES} & set(VARIABLES)


def test_when_a_default_depends_on_the_machine_then_the_reference_shows_words_not_the_value():
    machine_dependent = {"DAGSTER_HOME", "FRAMES_DIR", "FORECAST_SERVICE_URL"}

    shown = {f.alias for f in Settings.model_fields.values() if "shown" in f.json_schema_extra}

    assert machine_dependent <= shown


def test_when_a_cadence_is_defined_then_its_window_variables_are_declared_with_its_defaults():
    settings = Settings.from_env({})

    for name, cadence in CADENCES.items():
        assert {f"FIRST_WINDOW_{name.upper()}", f"WINDOWS_PER_BACKFILL_RUN_{name.upper()}"} <= set(VARIABLES)
        assert settings.first_window[name] == cadence.first_window
        assert settings.windows_per_backfill_run[name] == cadence.windows_per_backfill_run


def test_when_secrets_are_set_then_the_settings_keep_their_names_and_never_their_values():
    env = {"DATABASE_URL": "postgresql://u:pw-one@db/x", "PREDICT_API_TOKEN": "tok-two",
           "KRONOS_BATCH_URL": "http://u:pw-three@kronos/batch", "KRONOS_BATCH_TOKEN": "tok-four",
           "MARKET_DATA_DATABASE_URL": "postgresql://u:pw-five@bars/y", "DAGSTER_PG_URL": "postgresql://u:pw-six@db/x"}

    settings = Settings.from_env(env)

    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert [secret for secret in ("pw-one", "tok-two", "pw-three", "tok-four", "pw-five", "pw-six") if secret in shown] == []
    assert settings.database_url == Secret("DATABASE_URL", True) and settings.kronos_batch
    assert settings.market_data_url_variable == "MARKET_DATA_DATABASE_URL"
    assert settings.predict_api_token.value(env) == "tok-two"


def test_when_several_values_are_bad_then_one_error_names_each():
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"SERVE_PORT": "80800", "CHRONOS2_DEVICE": "gpu", "PREDICT_BATCH_WAIT_MS": "nan"})

    assert error.value.problems == [
        "CHRONOS2_DEVICE must be one of auto, cuda, cpu, got 'gpu'",
        "SERVE_PORT must be a whole number from 1 to 65535, got '80800'",
        "PREDICT_BATCH_WAIT_MS must be a non-negative number, got 'nan'",
    ]


@pytest.mark.parametrize(("env", "said"), [
    ({"MARKET_DATA_SOURCE": "files"}, "MARKET_DATA_SOURCE=files needs MARKET_DATA_PATH"),
    ({"MARKET_DATA_SOURCE": "postgres"}, "MARKET_DATA_SOURCE=postgres needs MARKET_DATA_DATABASE_URL or DATABASE_URL"),
])
def test_when_a_source_lacks_what_it_reads_then_the_settings_refuse_at_start(env, said):
    with pytest.raises(SettingsError, match=said):
        Settings.from_env(env)


# Where the project reads or sets variables: Python code by name, the Makefile's exports, the chart's env.
_PYTHON_READ = re.compile(r"""(?:environ\.get|environ\.setdefault|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']|environ\[\s*["']([A-Z][A-Z0-9_]+)["']\](?!\s*=[^=])""")


def _python_reads(folder: Path) -> dict[str, set[str]]:
    reads: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for match in _PYTHON_READ.finditer(path.read_text()):
            reads.setdefault(str(path.relative_to(REPO)), set()).add(match.group(1) or match.group(2))
    return reads


def test_when_the_code_reads_a_variable_then_only_the_settings_read_it_by_name():
    reads = _python_reads(REPO / "forecasting_pipeline")

    assert reads == {}


def test_when_the_project_reads_or_sets_a_variable_then_the_reference_declares_it():
    names = set().union(*_python_reads(REPO / "benchmarks").values())
    names |= set(re.findall(r"^export ([A-Z][A-Z0-9_]+)", (REPO / "Makefile").read_text(), re.MULTILINE))
    for chart_file in [*(REPO / "deploy").rglob("values.yaml"), *(REPO / "deploy").rglob("templates/*.yaml")]:
        names |= set(re.findall(r"- name: ([A-Z][A-Z0-9_]+)\n", chart_file.read_text()))

    # The shell's own (a benchmark finds a program on the PATH) need no entry.
    undeclared = names - set(VARIABLES) - {v.name for v in OTHER_VARIABLES} - {"PATH", "PYTHONPATH"}

    assert undeclared == set()
    assert {"DATABASE_URL", "CHRONOS2_MODEL", "HF_HOME", "DAGSTER_EVENT_BATCH_SIZE", "PREDICT_API_TOKEN"} <= names


def test_when_the_service_starts_with_a_bad_value_then_it_stops_at_once_naming_the_variable():
    env = {**os.environ, "PREDICT_MAX_BARS": "lots", "ENSEMBLE_SCHEME": "median"}

    done = subprocess.run([sys.executable, "-m", "forecasting_pipeline.cli", "serve"],
                          env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "forecasting-pipeline: ENSEMBLE_SCHEME must be one of grid, inverse, sqrt-inverse, got 'median'",
        "forecasting-pipeline: PREDICT_MAX_BARS must be a positive whole number, got 'lots'",
    ]
