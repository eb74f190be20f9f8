"""The service's read endpoints over real HTTP: the gateway's /showcase/ml-prediction, and the dashboard's bars and scores.

One `forecasting-pipeline serve` per module (conftest.py) over a database seeded with Kronos and
Chronos-2 rows in the shapes each writes, and with stored scores.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import psycopg
import pytest

from forecasting_pipeline_tests.conftest import start_service, stop_service, store_scores

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
SHOWCASE = "/showcase/ml-prediction"


def _insert(conn, symbol, timeframe, model, as_of, created_at, steps, version="v1"):
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, created_at, predictions) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
        (symbol, timeframe, model, version, as_of, created_at, json.dumps(steps)),
    )


def _steps(origin, p50s, banded=True):
    return [
        {"step": i, "ts": (origin + timedelta(days=i)).isoformat(), "p10": m - 1, "p50": m, "p90": m + 1, "close": m}
        if banded else {"ts": (origin + timedelta(days=i)).isoformat(), "close": m}
        for i, m in enumerate(p50s, start=1)
    ]


@pytest.fixture(scope="module")
def seeded_url(module_database_url):
    with psycopg.connect(module_database_url, autocommit=True) as conn:
        _insert(conn, "AAPL", "1d", "kronos-base", None, T0, _steps(T0, [100.0, 101.0], banded=False), "kronos-old")
        _insert(conn, "AAPL", "1d", "kronos-base", None, T0 + timedelta(days=1),
                _steps(T0 + timedelta(days=1), [102.0, 103.0], banded=False), "kronos-new")
        _insert(conn, "MSFT", "1d", "kronos-base", None, T0, _steps(T0, [300.0, 301.0], banded=False))
        _insert(conn, "AAPL", "1d", "chronos-2", T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1),
                _steps(T0 + timedelta(days=2), [110.0, 111.0]), "chronos-day2")
        _insert(conn, "AAPL", "1d", "chronos-2", T0 + timedelta(days=1), T0 + timedelta(days=5),
                _steps(T0 + timedelta(days=1), [105.0, 106.0]), "chronos-day1-rerun")
        _insert(conn, "AAPL", "1h", "chronos-2", T0, T0 + timedelta(minutes=55), _steps(T0, [99.0]), "chronos-hourly")
        store_scores(conn, "1d", [
            ("chronos-2", "AAPL", 1, 3, 300, 0.40, 0.70, 0.90),
            ("chronos-2", "AAPL", 2, 3, 100, 0.80, 0.90, 1.30),
            ("kronos-base", "AAPL", 1, 1, 200, 0.60, None, 1.10),
            ("baseline-random-walk", "AAPL", 1, 1, 300, 0.50, None, 1.00),
            ("chronos-2", "MSFT", 1, 3, 50, 9.0, 0.1, 9.0),
        ], T0 + timedelta(days=10), n_below_p10=1, n_above_p90=1, below_p10_rate=0.1, above_p90_rate=0.1,
            first_as_of=T0, last_as_of=T0)
    return module_database_url


@pytest.fixture(scope="module")
def reader(seeded_url, tiny_checkpoint, tmp_path_factory):
    running = start_service(seeded_url, tiny_checkpoint, tmp_path_factory.mktemp("showcase") / "service.log")
    try:
        yield running
    finally:
        stop_service(running)


def _get(service, path, **params):
    return service.get(path + ("?" + urlencode(params) if params else ""))


def _gateway_rows(url, *args) -> list[dict]:
    """What the gateway serves: the SQL function's rows as JSON (PostgREST writes timestamps in ISO 8601)."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(f"SELECT * FROM latest_ml_predictions({', '.join(['%s'] * len(args))})", args)
        names = [c.name for c in cur.description]
        return [{n: (v.isoformat() if isinstance(v, datetime) else v) for n, v in zip(names, row)} for row in cur]


def test_when_no_model_is_given_then_the_answer_is_exactly_the_gateways_rows(reader, seeded_url):
    status, rows, _ = _get(reader, SHOWCASE)

    assert status == 200
    assert rows == _gateway_rows(seeded_url)
    assert [(r["symbol"], r["model_name"], r["model_version"]) for r in rows] == [
        ("AAPL", "kronos-base", "kronos-new"), ("MSFT", "kronos-base", "v1")]
    assert list(rows[0]) == ["symbol", "timeframe", "model_name", "model_version", "as_of", "created_at", "predictions"]
    assert _get(reader, SHOWCASE, symbol="", timeframe="", model="")[1] == rows  # empty values count as absent


def test_when_a_model_symbol_and_timeframe_are_given_then_that_models_latest_row_is_answered(reader, seeded_url):
    status, rows, _ = _get(reader, SHOWCASE, symbol="AAPL", timeframe="1d", model="chronos-2")

    assert status == 200
    assert rows == _gateway_rows(seeded_url, "chronos-2", "1d", "AAPL")
    assert [(r["model_version"], r["as_of"]) for r in rows] == [("chronos-day2", (T0 + timedelta(days=2)).isoformat())]
    assert [s["p50"] for s in rows[0]["predictions"]] == [110.0, 111.0]


BAD_QUERIES = {
    "unknown model": ({"model": "chronos-3"}, "model", "unknown model 'chronos-3'; known models: chronos-2, kronos-base"),
    "unknown timeframe": ({"timeframe": "1w"}, "timeframe", "unknown timeframe '1w'; known timeframes: 1h, 1d"),
    "unknown symbol": ({"symbol": "ZZZZ"}, "symbol", "unknown symbol 'ZZZZ' for model 'kronos-base'; known symbols: AAPL, MSFT"),
    "malformed symbol": ({"symbol": "aapl'; drop table"}, "symbol", "malformed symbol"),
    "malformed model": ({"model": "../etc"}, "model", "malformed model"),
}


def test_when_a_parameter_is_unknown_then_400_names_it_and_what_the_endpoint_takes(reader):
    status, answer, _ = _get(reader, SHOWCASE, modle="chronos-2")

    assert status == 400
    assert answer["errors"] == [{"field": "modle",
                                 "reason": "unknown parameter 'modle'; this endpoint takes symbol, timeframe, model"}]


@pytest.mark.parametrize("params, field, reason", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_when_a_parameter_is_bad_then_422_names_it_and_lists_what_is_known(reader, params, field, reason):
    status, answer, _ = _get(reader, SHOWCASE, **params)

    assert status == 422, answer
    assert answer["errors"][0]["field"] == field
    assert reason in answer["errors"][0]["reason"]


KNOWN_WITHOUT_ROWS = {
    "an instrument of the universe no model has forecast": (
        {"symbol": "TSLA"}, "no 'kronos-base' rows for 'TSLA' yet"),
    "an instrument without rows at the timeframe": (
        {"symbol": "MSFT", "model": "chronos-2", "timeframe": "1h"}, "no 'chronos-2' rows for 'MSFT' at '1h' yet"),
}


@pytest.mark.parametrize("params, reason", KNOWN_WITHOUT_ROWS.values(), ids=KNOWN_WITHOUT_ROWS.keys())
def test_when_a_known_instrument_has_no_rows_yet_then_404_says_so(reader, params, reason):
    status, answer, _ = _get(reader, SHOWCASE, **params)

    assert status == 404, answer
    assert answer["errors"][0]["field"] == "symbol"
    assert answer["errors"][0]["reason"].startswith(reason)


def test_when_a_parameter_is_repeated_then_400_says_to_give_it_once(reader):
    status, answer, _ = reader.get(SHOWCASE + "?model=chronos-2&model=kronos-base")

    assert status == 400
    assert answer["errors"] == [{"field": "model", "reason": "model is given 2 times; give it once"}]


def test_when_scores_are_asked_then_each_model_is_pooled_over_steps_by_forecasts_scored(reader):
    status, answer, _ = _get(reader, "/showcase/scores", symbol="AAPL", timeframe="1d")

    assert status == 200
    by_model = {m["model_name"]: m for m in answer["models"]}
    assert sorted(by_model) == ["baseline-random-walk", "chronos-2", "kronos-base"]
    chronos = by_model["chronos-2"]
    assert (chronos["levels"], chronos["forecasts"], chronos["steps"]) == (3, 300, 2)
    assert chronos["mean_pinball"] == pytest.approx((0.40 * 300 + 0.80 * 100) / 400)
    assert chronos["coverage_p10_p90"] == pytest.approx((0.70 * 300 + 0.90 * 100) / 400)
    assert chronos["relative_mae"] == pytest.approx((0.90 * 300 + 1.30 * 100) / 400)
    assert by_model["kronos-base"]["coverage_p10_p90"] is None and by_model["kronos-base"]["levels"] == 1


def test_when_bars_are_asked_then_the_last_ones_up_to_the_newest_close_are_answered(reader):
    status, answer, _ = _get(reader, "/showcase/bars", symbol="BTC-USD", timeframe="1d", limit="30")

    assert status == 200
    times = [datetime.fromisoformat(b["ts"]) for b in answer["bars"]]
    assert len(times) == 30 and times == sorted(times)
    assert times[-1] == datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    assert (answer["symbol"], answer["calendar"]) == ("BTC-USD", "24/7")


@pytest.mark.parametrize("path, params, field", [
    ("/showcase/bars", {"symbol": "NOPE", "timeframe": "1d"}, "symbol"),
    ("/showcase/bars", {"symbol": "AAPL", "timeframe": "1d", "limit": "0"}, "limit"),
    ("/showcase/bars", {"symbol": "AAPL", "timeframe": "5m"}, "timeframe"),
    ("/showcase/scores", {"timeframe": "1d"}, "symbol"),
], ids=["unknown symbol", "limit out of range", "unknown timeframe", "no symbol"])
def test_when_a_dashboard_read_is_malformed_then_422_names_the_parameter(reader, path, params, field):
    status, answer, _ = _get(reader, path, **params)

    assert status == 422
    assert answer["errors"][0]["field"] == field


def test_when_the_instruments_are_asked_then_the_universe_timeframes_and_stored_models_are_listed(reader):
    status, answer, _ = _get(reader, "/showcase/instruments")

    assert status == 200
    assert len(answer["instruments"]) == 23 and answer["instruments"][0] == {
        "symbol": "BTC-USD", "asset_class": "crypto", "calendar": "24/7"}
    assert (answer["timeframes"], answer["models"], answer["default_model"]) == (
        ["1h", "1d"], ["chronos-2", "kronos-base"], "kronos-base")
