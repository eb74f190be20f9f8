"""The gateway's read contract on real PostgreSQL: latest_ml_predictions, its index, the read API and the CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from forecasting_pipeline.cli import main
from forecasting_pipeline.serving.gateway import (
    DEFAULT_MODEL,
    ReadPathMissingError,
    UnknownSeriesError,
    known_models,
    latest_forecast,
    latest_forecasts,
)

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def _insert(conn, symbol, timeframe, model, as_of, created_at, steps, version="v1"):
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
        (symbol, timeframe, model, version, as_of, created_at, json.dumps(steps)),
    )


def _kronos_steps(origin, closes):
    return [{"ts": (origin + timedelta(days=i)).isoformat(), "close": c} for i, c in enumerate(closes, start=1)]


def _chronos_steps(origin, p50s):
    return [
        {"step": i, "ts": (origin + timedelta(days=i)).isoformat(), "p10": m - 1, "p50": m, "p90": m + 1, "close": m}
        for i, m in enumerate(p50s, start=1)
    ]


@pytest.fixture
def seeded(conn):
    """Kronos (as_of NULL, central only) and Chronos-2 rows for two symbols, with older and re-run rows."""
    # Kronos: two forecasts of AAPL 1d; the later created_at is the latest.
    _insert(conn, "AAPL", "1d", "kronos-base", None, T0, _kronos_steps(T0, [100.0, 101.0]), "kronos-old")
    _insert(conn, "AAPL", "1d", "kronos-base", None, T0 + timedelta(days=1),
            _kronos_steps(T0 + timedelta(days=1), [102.0, 103.0]), "kronos-new")
    _insert(conn, "MSFT", "1d", "kronos-base", None, T0, _kronos_steps(T0, [300.0, 301.0]))
    # Chronos-2: window of day 2 is the latest by as_of, although day 1 was re-run afterwards.
    _insert(conn, "AAPL", "1d", "chronos-2", T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1),
            _chronos_steps(T0 + timedelta(days=2), [110.0, 111.0, 112.0]), "chronos-day2")
    _insert(conn, "AAPL", "1d", "chronos-2", T0 + timedelta(days=1), T0 + timedelta(days=5),
            _chronos_steps(T0 + timedelta(days=1), [105.0, 106.0, 107.0]), "chronos-day1-rerun")
    _insert(conn, "AAPL", "1h", "chronos-2", T0, T0 + timedelta(minutes=55),
            _chronos_steps(T0, [99.0]), "chronos-hourly")
    return conn


def test_when_no_model_is_given_then_latest_kronos_base_rows_are_returned(seeded):
    rows = latest_forecasts(seeded)

    assert DEFAULT_MODEL == "kronos-base"
    assert [(f.symbol, f.timeframe, f.model_name, f.model_version) for f in rows] == [
        ("AAPL", "1d", "kronos-base", "kronos-new"),
        ("MSFT", "1d", "kronos-base", "v1"),
    ]
    assert rows[0].as_of is None
    assert rows[0].steps[0]["close"] == 102.0


def test_when_sql_function_is_called_without_arguments_then_model_defaults_to_kronos_base(seeded):
    rows = seeded.execute("SELECT symbol, model_name FROM latest_ml_predictions()").fetchall()

    assert rows == [("AAPL", "kronos-base"), ("MSFT", "kronos-base")]


def test_when_model_is_chronos_2_then_latest_is_by_as_of_not_by_rewrite_time(seeded):
    forecast = latest_forecast(seeded, "AAPL", "1d", "chronos-2")

    assert forecast.model_version == "chronos-day2"
    assert forecast.as_of == T0 + timedelta(days=2)
    assert [s["p50"] for s in forecast.steps] == [110.0, 111.0, 112.0]


def test_when_timeframe_is_omitted_then_one_row_per_symbol_and_timeframe(seeded):
    rows = latest_forecasts(seeded, "chronos-2")

    assert [(f.symbol, f.timeframe, f.model_version) for f in rows] == [
        ("AAPL", "1d", "chronos-day2"),
        ("AAPL", "1h", "chronos-hourly"),
    ]


def test_when_model_is_unknown_then_message_lists_known_models(seeded):
    with pytest.raises(UnknownSeriesError, match=r"unknown model 'chronos-3'; known models: chronos-2, kronos-base$"):
        latest_forecast(seeded, "AAPL", "1d", "chronos-3")


def test_when_symbol_is_unknown_then_message_lists_the_models_symbols(seeded):
    with pytest.raises(
        UnknownSeriesError, match=r"unknown symbol 'TSLA' for model 'kronos-base' at '1d'; known symbols: AAPL, MSFT$"
    ):
        latest_forecast(seeded, "TSLA", "1d")


def test_when_model_lacks_the_timeframe_then_message_lists_its_timeframes(seeded):
    with pytest.raises(UnknownSeriesError, match=r"model 'kronos-base' has no '1h' forecasts; its timeframes: 1d$"):
        latest_forecast(seeded, "AAPL", "1h")


def test_when_table_is_empty_then_message_says_so(conn):
    with pytest.raises(UnknownSeriesError, match=r"known models: \(none: ml_predictions is empty\)"):
        latest_forecast(conn, "AAPL", "1d")


def test_when_migrations_are_missing_then_read_path_error_not_sql_error(empty_database_url):
    with psycopg.connect(empty_database_url) as conn:
        with pytest.raises(ReadPathMissingError, match="run `forecasting-pipeline migrate` first"):
            latest_forecasts(conn)
        # The connection stays usable after the refused call.
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_when_known_models_then_sorted_distinct_names(seeded):
    assert known_models(seeded) == ["chronos-2", "kronos-base"]


def test_when_cli_latest_with_model_then_table_of_steps_is_printed(seeded, database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)

    code = main(["latest", "AAPL", "--timeframe", "1d", "--model", "chronos-2"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "AAPL 1d  model chronos-2 (chronos-day2)"
    assert out[1] == "as_of 2026-03-04 12:00   created_at 2026-03-04 13:00"
    assert out[2].split() == ["step", "ts", "(UTC)", "p10", "p50", "p90"]
    assert [line.split() for line in out[3:]] == [
        ["1", "2026-03-05", "12:00", "109", "110", "111"],
        ["2", "2026-03-06", "12:00", "110", "111", "112"],
        ["3", "2026-03-07", "12:00", "111", "112", "113"],
    ]


def test_when_cli_latest_without_model_then_kronos_central_steps_are_printed(seeded, database_url, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)

    code = main(["latest", "AAPL"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "AAPL 1d  model kronos-base (kronos-new)"
    assert out[1].startswith("as_of - (not recorded)")
    assert [line.split() for line in out[3:]] == [["1", "2026-03-04", "12:00", "-", "102", "-"],
                                                  ["2", "2026-03-05", "12:00", "-", "103", "-"]]


@pytest.mark.parametrize("predictions, shown", [
    ({"error": "CUDA out of memory"}, ['predictions is not a list of steps: {"error": "CUDA out of memory"}']),
    ([{"ts": "soon", "close": "n/a"}, 7], ["1 soon - n/a -", "2 malformed step: 7"]),
], ids=["not a list", "malformed steps"])
def test_when_the_latest_kronos_row_is_malformed_then_cli_latest_shows_it_as_stored(
    predictions, shown, conn, database_url, monkeypatch, capsys
):
    conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1d', %s::jsonb)",
                 (json.dumps(predictions),))
    conn.commit()
    monkeypatch.setenv("DATABASE_URL", database_url)

    code = main(["latest", "AAPL"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [" ".join(line.split()) for line in out if not line.startswith(("AAPL", "as_of", "step"))] == shown


def test_when_cli_latest_with_unknown_model_then_clear_message_and_exit_code_2(
    seeded, database_url, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", database_url)

    code = main(["latest", "AAPL", "--model", "chronos-3"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.strip() == (
        "forecasting-pipeline latest: unknown model 'chronos-3'; known models: chronos-2, kronos-base"
    )


def test_when_100k_rows_then_explain_analyze_uses_the_latest_index(conn):
    # 23 symbols x 2 timeframes x 2 models; Kronos rows (every third) have as_of NULL, as in production.
    conn.execute(
        """
        INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions)
        SELECT 'S' || lpad((g % 23)::text, 2, '0'),
               CASE WHEN (g / 23) % 2 = 0 THEN '1h' ELSE '1d' END,
               CASE WHEN g % 3 = 0 THEN 'kronos-base' ELSE 'chronos-2' END,
               'v',
               CASE WHEN g % 3 = 0 THEN NULL ELSE timestamptz '2026-01-01' + g * interval '1 minute' END,
               timestamptz '2026-01-01' + g * interval '1 minute' + interval '5 minutes',
               '[{"ts": "2026-01-01T00:00:00Z", "close": 1.0}]'::jsonb
        FROM generate_series(1, 100000) AS g
        """
    )
    conn.execute("ANALYZE ml_predictions")

    plans = {}
    for model in ("kronos-base", "chronos-2"):
        plans[model] = "\n".join(
            line for (line,) in conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM latest_ml_predictions(%s, '1d')", (model,)
            )
        )
    rows = latest_forecasts(conn, "chronos-2", "1d")

    for model, plan in plans.items():
        # The per-series lookup is an index probe on idx_ml_pred_latest, and nothing scans the table.
        assert "Index Scan using idx_ml_pred_latest" in plan, plan
        assert f"Index Cond: ((model_name = '{model}'::text) AND (timeframe = s.timeframe) AND (symbol = s.symbol))" in plan
        assert "Seq Scan" not in plan, plan
    # The same answer as a plain (unindexed) reading of "latest": max as_of per symbol.
    expected = conn.execute(
        "SELECT symbol, max(as_of) FROM ml_predictions WHERE model_name = 'chronos-2' AND timeframe = '1d' "
        "GROUP BY symbol ORDER BY symbol"
    ).fetchall()
    assert [(f.symbol, f.as_of) for f in rows] == expected
    assert len(rows) == 23
