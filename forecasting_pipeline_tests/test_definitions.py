"""The code location loads with both chains, their jobs and schedules, pools and the in-process executor."""

import dagster as dg

from forecasting_pipeline.definitions import defs


def test_when_definitions_load_then_both_chains_jobs_and_schedules_are_present():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}

    for cadence in ("1h", "1d"):
        assert {f"ohlcv_{cadence}", f"covariates_{cadence}", f"chronos2_forecasts_{cadence}",
                f"ml_predictions_{cadence}"} <= keys
        assert defs.resolve_job_def(f"chronos2_{cadence}_job").executor_def is dg.in_process_executor
    assert {s.name for s in defs.schedules} >= {"chronos2_1h_schedule", "chronos2_1d_schedule"}


def test_when_definitions_load_then_the_database_url_comes_from_the_environment_not_the_code():
    database = defs.resources["database"]

    assert isinstance(database.url, dg.EnvVar)
    assert database.url.env_var_name == "DATABASE_URL"
