"""The forecast fan on a real materialisation: metadata holds a PNG data URI, with Kronos overlaid where it matches."""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl
import pytest

from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.serving.fan_charts import kronos_overlay, window_fan_chart
from forecasting_pipeline.serving.plots import FIGURE_DPI, PNG_SIGNATURE, fan_figure_size
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS

WINDOW = "2025-06-02"
# The window ends at 2025-06-03 00:00 UTC; every instrument's daily as_of lies within the day before.
KRONOS_RUN = datetime(2025, 6, 3, 1, 0, tzinfo=timezone.utc)
_IMAGE = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,(?P<data>[A-Za-z0-9+/=]+)\)")


def _kronos_row(conn, symbol, created_at):
    steps = [{"ts": (created_at + timedelta(days=i)).isoformat(), "close": 100.0 + i} for i in range(1, 6)]
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
        (symbol, json.dumps(steps), created_at),
    )


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_when_a_window_is_materialised_then_metadata_holds_a_fan_png_with_kronos_overlay(resources, instance, conn):
    # Kronos forecasts made an hour after the window for two instruments, and one made a week later
    # (another origin, which must not be overlaid).
    _kronos_row(conn, "AAPL", KRONOS_RUN)
    _kronos_row(conn, "BTC-USD", KRONOS_RUN)
    _kronos_row(conn, "MSFT", KRONOS_RUN + timedelta(days=7))

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=resources, instance=instance)

    assert result.success
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("ml_predictions_1d")]
    metadata = event.materialization.metadata
    markdown = metadata["forecast_fan"].value
    assert markdown.startswith(f"Window {WINDOW}: 23 instruments, Kronos overlaid on 2.\n\n![Forecast fan 1d {WINDOW}]")
    png = base64.b64decode(_IMAGE.search(markdown)["data"], validate=True)
    assert png[:8] == PNG_SIGNATURE
    assert _png_size(png) == tuple(round(x * FIGURE_DPI) for x in fan_figure_size(23))
    assert metadata["forecast_fan_window"].value == WINDOW
    assert metadata["kronos_overlay_instruments"].value == 2


def test_when_kronos_rows_match_origins_then_overlay_has_their_later_steps_only(conn):
    origins = pl.DataFrame(
        {"symbol": ["AAPL", "BTC-USD", "MSFT"],
         "as_of": [datetime(2025, 6, 2, 20, tzinfo=timezone.utc), KRONOS_RUN - timedelta(hours=1),
                   datetime(2025, 6, 2, 20, tzinfo=timezone.utc)]}
    )
    _kronos_row(conn, "AAPL", KRONOS_RUN)
    _kronos_row(conn, "AAPL", KRONOS_RUN - timedelta(days=3))  # older origin: not this forecast's
    _kronos_row(conn, "BTC-USD", KRONOS_RUN)
    _kronos_row(conn, "MSFT", KRONOS_RUN + timedelta(days=7))

    overlay = kronos_overlay(conn, "1d", origins)

    assert overlay["symbol"].unique().sort().to_list() == ["AAPL", "BTC-USD"]
    assert overlay.filter(pl.col("symbol") == "AAPL")["p50"].to_list() == [101.0, 102.0, 103.0, 104.0, 105.0]
    assert overlay["ts"].min() == KRONOS_RUN + timedelta(days=1)


def test_when_a_matching_kronos_row_is_malformed_then_it_is_not_overlaid_and_the_others_are(conn):
    origins = pl.DataFrame({"symbol": ["AAPL", "BTC-USD", "MSFT"], "as_of": [KRONOS_RUN - timedelta(hours=1)] * 3})
    _kronos_row(conn, "AAPL", KRONOS_RUN)
    for symbol, predictions in (("BTC-USD", {"error": "batch failed"}), ("MSFT", [{"ts": "soon", "close": "n/a"}])):
        conn.execute(
            "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
            (symbol, json.dumps(predictions), KRONOS_RUN),
        )

    overlay = kronos_overlay(conn, "1d", origins)

    assert overlay["symbol"].unique().to_list() == ["AAPL"]
    assert overlay.height == 5


def test_when_the_fan_cannot_be_drawn_then_the_rows_are_stored_and_the_run_succeeds(resources, instance, conn):
    # A date the ISO pattern admits but PostgreSQL refuses: the overlay query fails after every
    # window has been committed.
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES ('AAPL', '1d', %s::jsonb, %s)",
        (json.dumps([{"ts": "2025-02-30T00:00:00Z", "close": 1.0}]), KRONOS_RUN),
    )
    conn.commit()

    result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=resources, instance=instance)

    assert result.success
    assert conn.execute("SELECT count(*) FROM ml_predictions WHERE model_name = 'chronos-2'").fetchone()[0] == 23
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("ml_predictions_1d")]
    fan = event.materialization.metadata["forecast_fan"].value
    assert fan.startswith("Not drawn: DatetimeFieldOverflow: date/time field value out of range")
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any(m.startswith("forecast fan not drawn (DatetimeFieldOverflow") for m in warnings)


def test_when_run_covers_several_windows_then_only_the_last_is_drawn(conn):
    def window(day: int) -> pl.DataFrame:
        as_of = datetime(2025, 6, day, tzinfo=timezone.utc)
        return pl.DataFrame(
            {"symbol": ["AAPL", "AAPL"], "as_of": [as_of, as_of], "step": [1, 2],
             "ts": [as_of + timedelta(days=1), as_of + timedelta(days=2)],
             "p10": [1.0, 1.0], "p50": [2.0, 2.0], "p90": [3.0, 3.0]}
        ).with_columns(pl.col("as_of", "ts").cast(pl.Datetime("us", "UTC")))

    chart = window_fan_chart(conn, "1d", {"2025-06-03": window(3), "2025-06-05": window(5), "2025-06-04": window(4)}, {})

    assert chart.window == "2025-06-05"
    assert chart.instruments == 1
    assert chart.kronos_instruments == []
    assert chart.png[:8] == PNG_SIGNATURE


def test_when_forecasts_hold_no_window_then_value_error(conn):
    with pytest.raises(ValueError, match="forecasts holds no window"):
        window_fan_chart(conn, "1d", {}, {})
