"""Schedules tick at :55 hourly and 05:45 daily (UTC) and each targets the latest complete window."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from forecasting_pipeline.definitions import defs


@pytest.mark.parametrize(
    ("schedule", "cron", "tick", "window"),
    [
        ("chronos2_1h_schedule", "55 * * * *", datetime(2026, 3, 2, 10, 55, tzinfo=timezone.utc), "2026-03-02-09:00"),
        ("chronos2_1h_schedule", "55 * * * *", datetime(2026, 3, 2, 0, 55, tzinfo=timezone.utc), "2026-03-01-23:00"),
        ("chronos2_1d_schedule", "45 5 * * *", datetime(2026, 3, 3, 5, 45, tzinfo=timezone.utc), "2026-03-02"),
        ("chronos2_1d_schedule", "45 5 * * *", datetime(2026, 1, 1, 5, 45, tzinfo=timezone.utc), "2025-12-31"),
    ],
)
def test_when_a_schedule_ticks_then_it_launches_one_run_for_the_latest_complete_window(schedule, cron, tick, window):
    definition = defs.get_schedule_def(schedule)
    with dg.instance_for_test() as instance:
        result = definition.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))

    assert definition.cron_schedule == cron
    assert definition.execution_timezone == "UTC"
    assert [request.partition_key for request in result.run_requests] == [window]


def test_when_the_hourly_tick_targets_a_window_then_that_window_ended_before_the_tick():
    tick = datetime(2026, 3, 2, 10, 55, tzinfo=timezone.utc)
    definition = defs.get_schedule_def("chronos2_1h_schedule")
    with dg.instance_for_test() as instance:
        (request,) = definition.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
        ).run_requests
    window = defs.resolve_job_def("chronos2_1h_job").partitions_def.time_window_for_partition_key(request.partition_key)

    assert window.end == datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
