"""Reading ml_predictions back: every stored value returns exactly, through the filters a caller gives."""

import json
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from forecasting_pipeline.storage.ml_predictions import (
    PredictionRow,
    encoded_rows,
    prediction_rows,
    read_predictions,
    upsert_window,
    windows_rows,
)

AS_OF = datetime(2026, 3, 2, 15, 0, 0, 123456, tzinfo=timezone.utc)
# Digits a float32 round trip or a short text format would lose.
P50 = 187.12345678901234
VERSION = 'chronos-forecasting==2.3.2 "local", rev a,b'


def chronos_row(symbol: str, as_of: datetime, steps: int = 3) -> PredictionRow:
    return PredictionRow(symbol, "1h", "chronos-2", VERSION, as_of, [
        {"step": s, "ts": (as_of + timedelta(hours=s)).isoformat(), "p10": P50 - s, "p50": P50 + s * 1e-9,
         "p90": P50 + s, "close": P50 + s * 1e-9}
        for s in range(1, steps + 1)
    ])


def test_when_a_forecast_is_read_back_then_instants_floats_and_text_are_exact(conn):
    upsert_window(conn, [chronos_row("AAPL", AS_OF)])

    stored = read_predictions(conn, "1h")

    assert stored.schema["as_of"] == pl.Datetime("us", "UTC")
    assert stored.schema["ts"] == pl.Datetime("us", "UTC")
    assert stored["step"].to_list() == [1, 2, 3]
    assert stored["as_of"].to_list() == [AS_OF] * 3
    assert stored["ts"].to_list() == [AS_OF + timedelta(hours=s) for s in (1, 2, 3)]
    assert stored["p50"].to_list() == [P50 + s * 1e-9 for s in (1, 2, 3)]
    assert stored["p10"].to_list() == [P50 - s for s in (1, 2, 3)]
    assert stored["model_version"].unique().to_list() == [VERSION]


def test_when_symbols_and_as_of_bounds_are_given_then_only_those_forecasts_are_read(conn):
    rows = [chronos_row(symbol, AS_OF + timedelta(hours=h)) for symbol in ("AAPL", "MSFT", "EURUSD") for h in range(3)]
    upsert_window(conn, rows)

    stored = read_predictions(conn, "1h", symbols=["AAPL", "EURUSD"], as_of_from=AS_OF + timedelta(hours=1),
                              as_of_to=AS_OF + timedelta(hours=2))

    assert sorted(stored["symbol"].unique().to_list()) == ["AAPL", "EURUSD"]
    assert sorted(stored["as_of"].unique().to_list()) == [AS_OF + timedelta(hours=1), AS_OF + timedelta(hours=2)]
    assert stored.height == 2 * 2 * 3


def test_when_kronos_rows_hold_only_closes_then_p50_is_the_close_and_the_band_is_null(conn):
    steps = [{"ts": (AS_OF + timedelta(hours=s)).isoformat(), "close": 100.0 + s} for s in (1, 2)]
    conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1h', %s::jsonb)",
                 (json.dumps(steps),))

    stored = read_predictions(conn, "1h", model_name="kronos-base")

    assert stored["p50"].to_list() == [101.0, 102.0]
    assert stored["p10"].null_count() == 2 and stored["p90"].null_count() == 2
    assert stored["as_of"].null_count() == 2
    assert stored["model_version"].null_count() == 2


def test_when_nothing_is_stored_then_the_frame_is_empty_with_the_full_schema(conn):
    stored = read_predictions(conn, "1d")

    assert stored.height == 0
    assert stored.columns == ["model_name", "model_version", "symbol", "as_of", "created_at", "step", "ts",
                              "p10", "p50", "p90"]
    assert stored.schema["created_at"] == pl.Datetime("us", "UTC")


def test_when_another_writer_stores_malformed_steps_then_only_they_are_skipped_and_counted(conn, caplog):
    def kronos(symbol, predictions):
        conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES (%s, '1h', %s::jsonb)",
                     (symbol, json.dumps(predictions)))

    # Well formed, in the spellings a writer may use: a decimal string, a date-only or zoneless ts.
    kronos("AAPL", [{"ts": "2026-03-02T16:00:00Z", "close": "101.5"}, {"ts": "2026-03-03", "close": 102},
                    {"ts": "2026-03-03 01:00:00", "close": 1.03e2}])
    kronos("MSFT", {"error": "batch failed"})                                      # not an array
    kronos("NVDA", None)                                                           # JSON null
    kronos("TSLA", [{"ts": "2026-03-02T16:00:00Z", "close": "abc"}])               # not a number
    kronos("META", [{"ts": "yesterday", "close": 1.0}, {"ts": "2026-13-01", "close": 1.0}, 7])

    with caplog.at_level("WARNING", logger="forecasting_pipeline.storage.ml_predictions"):
        stored = read_predictions(conn, "1h", model_name="kronos-base")

    assert stored.select("symbol", "ts", "p50").rows() == [
        ("AAPL", datetime(2026, 3, 2, 16, tzinfo=timezone.utc), 101.5),
        ("AAPL", datetime(2026, 3, 3, tzinfo=timezone.utc), 102.0),
        ("AAPL", datetime(2026, 3, 3, 1, tzinfo=timezone.utc), 103.0),
    ]
    refused, skipped = caplog.messages
    assert refused.startswith("kronos-base 1h forecasts hold a value PostgreSQL refuses (")
    assert refused.endswith("); reading them guarded")
    assert skipped.startswith("skipped 6 malformed kronos-base 1h forecast steps (no ISO 8601 ts, or no numeric "
                              "p50/close) in 4 rows, e.g. ")


def test_when_a_stored_row_is_malformed_inside_a_transaction_then_the_read_keeps_the_callers_work(conn):
    conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1h', '{}'::jsonb)")
    upsert_window(conn, [chronos_row("MSFT", AS_OF)])
    conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('NVDA', '1h', '[]'::jsonb)")

    assert read_predictions(conn, "1h", model_name="kronos-base").height == 0

    # The refused plain read rolled back to its savepoint only: the caller's open insert is still there.
    assert conn.execute("SELECT count(*) FROM ml_predictions WHERE symbol = 'NVDA'").fetchone()[0] == 1


FRIDAY_CLOSE = datetime(2026, 3, 6, 21, tzinfo=timezone.utc)


def stored(conn) -> list[tuple[str, datetime]]:
    return conn.execute("SELECT symbol, as_of FROM ml_predictions ORDER BY symbol, as_of").fetchall()


def test_when_windows_share_a_row_then_it_stays_until_no_windows_latest_run_makes_it(conn):
    # Friday's window and Saturday's forecast AAPL from the same close; BTC-USD trades on Saturday.
    saturday_close = FRIDAY_CLOSE + timedelta(days=1)
    upsert_window(conn, [chronos_row("AAPL", FRIDAY_CLOSE), chronos_row("BTC-USD", FRIDAY_CLOSE)], window="fri")
    upsert_window(conn, [chronos_row("AAPL", FRIDAY_CLOSE), chronos_row("BTC-USD", saturday_close)], window="sat")

    upsert_window(conn, [chronos_row("BTC-USD", saturday_close)], window="sat")
    after_saturday_rerun = stored(conn)
    upsert_window(conn, [chronos_row("BTC-USD", FRIDAY_CLOSE)], window="fri")

    assert after_saturday_rerun == [("AAPL", FRIDAY_CLOSE), ("BTC-USD", FRIDAY_CLOSE), ("BTC-USD", saturday_close)]
    assert stored(conn) == [("BTC-USD", FRIDAY_CLOSE), ("BTC-USD", saturday_close)]


def test_when_a_window_is_given_no_rows_or_rows_of_no_window_are_written_then_nothing_is_deleted(conn):
    upsert_window(conn, [chronos_row("AAPL", AS_OF), chronos_row("MSFT", AS_OF)], window="w")

    assert upsert_window(conn, [], window="w") == 0
    upsert_window(conn, [chronos_row("NVDA", AS_OF)])

    assert stored(conn) == [("AAPL", AS_OF), ("MSFT", AS_OF), ("NVDA", AS_OF)]


def test_when_forecast_rows_are_encoded_column_wise_then_the_text_is_json_dumps_of_the_steps_exactly():
    as_of = [AS_OF, AS_OF.replace(microsecond=0)]
    frame = pl.DataFrame({
        "symbol": ["MSFT"] * 3 + ["AAPL"] * 3,
        "as_of": [as_of[1]] * 3 + [as_of[0]] * 3,
        "step": [2, 1, 3, 1, 2, 3],
        "ts": [as_of[1] + timedelta(hours=h) for h in (2, 1, 3)] + [as_of[0] + timedelta(hours=h) for h in (1, 2, 3)],
        "p10": [P50 - 1, 0.1, 1e-7, 1e20, 2.5e-300, -0.0],
        "p50": [P50, 1 / 3, 12345678901234567.0, 100.0, float("nan"), 5e-324],
        "p90": [P50 + 1, 0.3, None, 1e16, 7.0, 1.5],
    }, schema_overrides={"as_of": pl.Datetime("us", "UTC"), "ts": pl.Datetime("us", "UTC")})

    encoded = encoded_rows(frame, "1h", VERSION)
    plain = prediction_rows(frame, "1h", VERSION)

    assert [r.predictions_json for r in encoded] == [json.dumps(r.predictions) for r in plain]
    assert [r.params()[:5] for r in encoded] == [r.params()[:5] for r in plain]


def test_when_a_runs_windows_are_encoded_together_then_each_gets_the_rows_it_gets_alone_and_mixed_versions_are_refused():
    def window(hours: int, version: str) -> pl.DataFrame:
        as_of = AS_OF + timedelta(hours=hours)
        return pl.DataFrame({
            "symbol": ["MSFT", "AAPL", "AAPL"], "as_of": [as_of] * 3, "step": [1, 2, 1],
            "ts": [as_of + timedelta(hours=h) for h in (1, 2, 1)], "p10": [1.0, 2.0, 3.0], "p50": [1.5, 2.5, 3.5],
            "p90": [2.0, 3.0, 4.0], "model_version": [version] * 3,
        }, schema_overrides={"as_of": pl.Datetime("us", "UTC"), "ts": pl.Datetime("us", "UTC")})

    forecasts = {"w2": window(2, "b"), "w1": window(1, "a"), "empty": window(0, "a").clear()}

    together = windows_rows(forecasts, "1h")

    assert together == {w: encoded_rows(f, "1h", f["model_version"][0]) if len(f) else [] for w, f in forecasts.items()}
    with pytest.raises(ValueError, match=r"window w1: forecasts of 2 model versions"):
        windows_rows({"w1": pl.concat([window(1, "a"), window(3, "b")])}, "1h")
