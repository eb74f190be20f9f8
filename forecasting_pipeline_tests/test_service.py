"""The forecast service over real HTTP on loopback: `forecasting-pipeline serve` with the tiny Chronos-2 (conftest.py).

The main service runs with the production defaults (and a token); a second one with a small body
limit, a deadline no request can meet and the dashboard made public. Each refusal is checked for
its status and the field it names; concurrency through the service's own Prometheus counters; the
answers against the chain's domain functions on the same bars.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.forecasting.window_forecasts import forecast_windows
from forecasting_pipeline.market.calendars import next_bar_closes
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources import SampleSource
from forecasting_pipeline.market.sources.sample import sample_bars
from forecasting_pipeline.storage.ml_predictions import prediction_rows
from forecasting_pipeline_tests.conftest import SERVICE_TOKEN, free_port, http_json, start_service, stop_service

CONTEXT = 64
PREDICT = "/predict-chronos2"
BATCH = "/predict-batch-chronos2"


def _metric(service, family_name: str, sample_name: str, **labels) -> float:
    _status, text, _headers = service.get("/metrics")
    return sum(
        sample.value for family in text_string_to_metric_families(text) if family.name == family_name
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _http_calls(service) -> float:
    return _metric(service, "forecast_model_calls", "forecast_model_calls_total", lane="interactive")


def _http_series(service) -> float:
    return _metric(service, "forecast_model_call_series", "forecast_model_call_series_sum", lane="interactive")


def _bars(symbol: str = "EURUSD", cadence: str = "1h", n: int = 100, end: datetime | None = None) -> list[dict]:
    """Real-looking bars of one instrument (the sample source), as a client would send them."""
    instrument = select_instruments(load_instruments(), [symbol])[0]
    frame = sample_bars(instrument, cadence, end or datetime.fromisoformat("2026-03-02T15:00:00+00:00"), n)
    return [{**row, "ts": row["ts"].isoformat()} for row in frame.drop("symbol").iter_rows(named=True)]


def test_when_the_service_runs_then_health_readiness_metrics_and_docs_answer(service):
    assert service.get("/healthz")[:2] == (200, {"status": "alive"})
    status, ready, _ = service.get("/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["socket"] == service.socket
    assert ready["model_version"].endswith("RANDOM-WEIGHTS") and ready["pid"] == service.process.pid
    status, page, _ = service.get("/docs")
    assert status == 200 and "swagger" in page.lower()
    status, spec, _ = service.get("/openapi.json")
    assert {PREDICT, BATCH, "/runs/forecast", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    defaults = {"forecast_batch_max_wait_seconds": 0.02, "forecast_batch_max_series": 32, "forecast_queue_max_series": 128,
                "forecast_deadline_seconds": 5.0, "forecast_max_request_cost": 4_194_304,
                "forecast_chunk_cost_gpu": 131_072, "forecast_chunk_cost_cpu": 1_024, "forecast_model_ready": 1}
    assert {name: _metric(service, name, name) for name in defaults} == defaults


def test_when_a_known_instrument_is_asked_then_the_answer_is_the_chain_forecast_of_the_same_bars(service, tiny_checkpoint):
    status, answer, _ = service.post(PREDICT, {"symbol": "AAPL", "timeframe": "1d", "horizon": 10, "context_length": CONTEXT})

    assert status == 200, answer
    assert (answer["symbol"], answer["timeframe"], answer["model_name"], answer["device"]) == ("AAPL", "1d", "chronos-2", "cpu")
    assert answer["model_version"].endswith("RANDOM-WEIGHTS") and answer["seconds"] > 0
    # The chain's own functions on the bars up to the answer's as_of: the row it would store.
    as_of = datetime.fromisoformat(answer["as_of"].replace("Z", "+00:00"))
    instrument = select_instruments(load_instruments(), ["AAPL"])[0]
    bars, _ = SampleSource().bars([instrument], "1d", as_of, CONTEXT)
    result = forecast_windows(
        {"w": engineer_covariates(bars)}, lambda s, a, n: next_bar_closes(instrument.calendar, "1d", a, n),
        Chronos2Runner(model=str(tiny_checkpoint), device="cpu"), 10, CONTEXT,
    )
    (row,) = prediction_rows(result.forecasts["w"], "1d", result.prediction.model.version)
    assert [list(step) for step in answer["predictions"]] == [list(step) for step in row.predictions]
    for got, stored in zip(answer["predictions"], row.predictions, strict=True):
        assert (got["step"], got["ts"]) == (stored["step"], stored["ts"])
        assert [got[k] for k in ("p10", "p50", "p90", "close")] == pytest.approx(
            [stored[k] for k in ("p10", "p50", "p90", "close")], rel=1e-6)


def test_when_an_ad_hoc_series_is_sent_then_its_steps_fall_on_its_calendar_at_the_levels_asked(service):
    bars = _bars("EURUSD", "1h", 100)

    status, answer, _ = service.post(PREDICT, {
        "bars": bars, "timeframe": "1h", "horizon": 30, "calendar": "24/5", "quantiles": [0.95, 0.05, 0.5],
    })

    assert status == 200, answer
    assert answer["symbol"] is None
    assert answer["as_of"].startswith(bars[-1]["ts"][:19])
    expected_ts = next_bar_closes("24/5", "1h", datetime.fromisoformat(bars[-1]["ts"]), 30)
    assert [step["ts"] for step in answer["predictions"]] == [t.isoformat() for t in expected_ts]
    for step in answer["predictions"]:
        assert list(step) == ["step", "ts", "p5", "p50", "p95", "close"]
        assert step["p5"] <= step["p50"] <= step["p95"] and step["close"] == step["p50"]


def test_when_bar_times_come_without_an_offset_then_they_are_read_as_utc(service):
    aware = _bars("EURUSD", "1h", 100)
    naive = [{**bar, "ts": bar["ts"].removesuffix("+00:00")} for bar in aware]
    body = {"timeframe": "1h", "horizon": 5, "calendar": "24/5"}

    answers = [service.post(PREDICT, {**body, "bars": bars}) for bars in (aware, naive)]

    assert naive[-1]["ts"] == "2026-03-02T15:00:00" and [status for status, _, _ in answers] == [200, 200]
    assert answers[1][1]["as_of"] == answers[0][1]["as_of"] == "2026-03-02T15:00:00Z"
    assert answers[1][1]["predictions"] == answers[0][1]["predictions"]


def test_when_eight_requests_arrive_together_then_each_is_answered_and_counted_in_the_interactive_lane(service):
    calls, series = _http_calls(service), _http_series(service)
    symbols = ["AAPL", "MSFT", "BTC-USD", "ETH-USD", "EURUSD", "GBPUSD", "SPX", "NDX"]

    with ThreadPoolExecutor(len(symbols)) as pool:
        answers = list(pool.map(
            lambda s: service.post(PREDICT, {"symbol": s, "timeframe": "1d", "context_length": CONTEXT}), symbols))

    assert [status for status, _, _ in answers] == [200] * len(symbols)
    assert [answer["symbol"] for _, answer, _ in answers] == symbols
    assert _http_series(service) - series == len(symbols)
    assert 1 <= _http_calls(service) - calls <= len(symbols)
    assert {answer["device"] for _, answer, _ in answers} == {"cpu"}
    assert {answer["device_reason"] for _, answer, _ in answers} == {"device=cpu configured"}


def _with(bars: list[dict], index: int, **changes) -> list[dict]:
    return [dict(bar, **changes) if i == index else bar for i, bar in enumerate(bars)]


def _adhoc(bars: list[dict], **extra) -> dict:
    return {"bars": bars, "timeframe": "1h", "calendar": "24/5", **extra}


GOOD = _bars("EURUSD", "1h", 100)

BAD_REQUESTS = {
    "unknown symbol": ({"symbol": "NOPE", "timeframe": "1d"}, "symbol", "unknown symbol 'NOPE'; known symbols: BTC-USD"),
    "unknown timeframe": ({"symbol": "AAPL", "timeframe": "1w"}, "timeframe", "unknown timeframe '1w'; known timeframes: 1h, 1d"),
    "horizon zero": ({"symbol": "AAPL", "timeframe": "1d", "horizon": 0}, "horizon", "greater than or equal to 1"),
    "horizon too long": ({"symbol": "AAPL", "timeframe": "1d", "horizon": 1025}, "horizon", "less than or equal to 1024"),
    "NaN close": (_adhoc(_with(GOOD, 70, close=math.nan)), "bars[70]", "non_finite"),
    "infinite volume": (_adhoc(_with(GOOD, 3, volume=math.inf)), "bars[3]", "non_finite"),
    "negative price": (_adhoc(_with(GOOD, 5, low=-1.0)), "bars[5]", "non_positive_price"),
    "zero price": (_adhoc(_with(GOOD, 6, open=0.0)), "bars[6]", "non_positive_price"),
    "unordered": (_adhoc(GOOD[:50] + [GOOD[60]] + GOOD[51:60] + GOOD[61:]), "bars[51].ts", "ascending time order"),
    "duplicate timestamp": (_adhoc(GOOD[:40] + [GOOD[39]] + GOOD[40:]), "bars[40].ts", "duplicate timestamp"),
    "too few bars": (_adhoc(GOOD[:20]), "bars", "short_history: 20 bars, fewer than min_history_bars=64"),
    "too many bars": (_adhoc(_bars("BTC-USD", "1h", 8193), calendar="24/7"), "bars", "8193 bars, over this service's limit of 8192"),
    "context over the limit": ({"symbol": "AAPL", "timeframe": "1d", "context_length": 8193}, "context_length", "limit of 8192"),
    "over the cost cap": ({"symbol": "AAPL", "timeframe": "1d", "context_length": 8192, "horizon": 1024}, "body",
                          "series x context x horizon = 8,388,608, over this service's limit of 4,194,304 (PREDICT_MAX_COST)"),
    "bars without calendar": ({"bars": GOOD, "timeframe": "1h"}, "calendar", "bars need the calendar"),
    "unknown calendar": (_adhoc(GOOD, calendar="MARS"), "calendar", "unknown calendar 'MARS'"),
    "calendar of a known instrument": ({"symbol": "AAPL", "timeframe": "1d", "calendar": "24/7"}, "calendar", "AAPL trades on XNAS"),
    "quantile not a model level": ({"symbol": "AAPL", "timeframe": "1d", "quantiles": [0.1, 0.33]}, "quantiles", "[0.33] are not levels"),
    "price not a number": (_adhoc(_with(GOOD, 2, close="high")), "bars[2].close", "valid number"),
    "unexpected field": ({"symbol": "AAPL", "timeframe": "1d", "horizn": 5}, "horizn", "Extra inputs are not permitted"),
    "neither symbol nor bars": ({"timeframe": "1d"}, "symbol", "give a known instrument's symbol, or bars"),
}


@pytest.mark.parametrize("body, field, reason", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_when_a_request_is_bad_then_422_names_the_field_and_the_reason(service, body, field, reason):
    status, answer, _ = service.post(PREDICT, raw=json.dumps(body).encode())  # json.dumps writes NaN and Infinity

    assert status == 422, answer
    assert answer["errors"][0]["field"] == field
    assert reason in answer["errors"][0]["reason"]


def test_when_the_body_is_not_json_then_400_says_so(service):
    status, answer, _ = service.post(PREDICT, raw=b'{"symbol": "AAPL",')

    assert status == 400
    assert answer["errors"][0]["field"] == "body" and answer["errors"][0]["reason"].startswith("not valid JSON")


def test_when_a_batch_has_a_bad_item_then_it_gets_its_own_error_and_the_rest_share_one_model_call(service):
    calls = _http_calls(service)
    items = [
        {"symbol": "AAPL", "timeframe": "1d", "context_length": CONTEXT},
        {"symbol": "NOPE", "timeframe": "1d"},
        _adhoc(_with(GOOD, 9, close=-3.0)),
        {"symbol": "XAUUSD", "timeframe": "1d", "horizon": 5, "context_length": 80},
        {"timeframe": "1h", "calendar": "24/5", "bars": GOOD, "symbol": "MY-FX"},
    ]

    status, answer, _ = service.post(BATCH, {"requests": items})

    assert status == 200, answer
    results = answer["results"]
    assert [r.get("symbol") for r in results] == ["AAPL", None, None, "XAUUSD", "MY-FX"]
    assert results[1] == {"index": 1, "status": 422, "errors": [{
        "field": "requests[1].symbol", "reason": results[1]["errors"][0]["reason"]}]}
    assert results[1]["errors"][0]["reason"].startswith("unknown symbol 'NOPE'")
    assert results[2]["errors"][0]["field"] == "requests[2].bars[9]"
    assert [len(results[i]["predictions"]) for i in (0, 3, 4)] == [10, 5, 24]
    # Horizons of 10, 5 and 24 steps all fit in one or two 16-step patches: 10 and 5 share a call.
    assert _http_calls(service) - calls == 2
    assert results[0]["batch_series"] == results[3]["batch_series"] == 2


def test_when_a_batch_has_too_many_items_then_422_names_the_limit(service):
    status, answer, _ = service.post(BATCH, {"requests": [{"symbol": "AAPL", "timeframe": "1d"}] * 65})

    assert status == 422
    assert answer["errors"] == [{"field": "requests", "reason": "65 items, over this service's limit of 64"}]


def test_when_a_batch_costs_more_than_the_cap_then_422_names_the_limit_before_any_model_call(service):
    calls = _http_calls(service)
    items = [{"symbol": "AAPL", "timeframe": "1h", "context_length": 8192, "horizon": 1024}] * 64

    status, answer, _ = service.post(BATCH, {"requests": items})

    assert status == 422
    assert answer["errors"] == [{"field": "requests", "reason": "series x context x horizon = 536,870,912, over this "
                                 "service's limit of 4,194,304 (PREDICT_MAX_COST): ask for fewer series, a shorter "
                                 "context or horizon"}]
    assert _http_calls(service) == calls
    assert _metric(service, "forecast_rejections", "forecast_rejections_total", reason="cost") >= 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SERVICE_TOKEN},
                                     {"Authorization": f"Basic {SERVICE_TOKEN}"}],
                         ids=["no header", "wrong token", "no scheme", "other scheme"])
def test_when_the_token_is_missing_or_wrong_then_401_and_the_token_is_never_shown(service, headers):
    body = {"symbol": "AAPL", "timeframe": "1d", "context_length": CONTEXT}

    status, answer, answer_headers = http_json("POST", service.url + PREDICT, body, headers)
    batch_status, _, _ = http_json("POST", service.url + BATCH, {"requests": [body]}, headers)

    assert (status, batch_status) == (401, 401)
    assert answer == {"errors": [{"field": "Authorization", "reason": "a valid 'Bearer' token is required"}]}
    assert answer_headers["www-authenticate"] == "Bearer"
    assert service.post(PREDICT, body)[0] == 200
    assert SERVICE_TOKEN not in service.log.read_text()


def test_when_a_token_is_set_then_every_endpoint_but_health_and_readiness_needs_it(service):
    guarded = ["/metrics", "/docs", "/openapi.json", "/", "/showcase/instruments", "/showcase/ml-prediction",
               "/static/dashboard.js"]

    assert [http_json("GET", service.url + path)[0] for path in guarded] == [401] * len(guarded)
    assert [http_json("GET", service.url + path)[0] for path in ("/healthz", "/readyz")] == [200, 200]
    assert [service.get(path)[0] for path in guarded] == [200] * len(guarded)


def test_when_a_request_has_no_token_then_it_is_refused_before_its_body_is_read(service):
    # A body of a gigabyte is declared and none is sent: the token is checked first, so the answer is a
    # 401, not the body limit's 413 and not a wait for the body.
    status, answer, _ = http_json("POST", service.url + PREDICT, headers={"Content-Length": str(1 << 30)}, raw=b"")

    assert status == 401 and answer["errors"][0]["field"] == "Authorization"


def test_when_no_token_is_configured_then_predictions_need_none(server_url, tiny_checkpoint, tmp_path):
    open_service = start_service(server_url, tiny_checkpoint, tmp_path / "open.log", {"PREDICT_API_TOKEN": ""})
    try:
        status, answer, _ = open_service.post(PREDICT, {"symbol": "BTC-USD", "timeframe": "1h", "context_length": CONTEXT})
    finally:
        stop_service(open_service)

    assert status == 200, answer
    assert answer["as_of"] >= (datetime.now().astimezone() - timedelta(hours=2)).isoformat()[:13]


def test_when_asked_to_listen_beyond_loopback_without_a_token_then_the_service_refuses_to_start_and_says_why(
    server_url, tiny_checkpoint
):
    env = {**os.environ, "DATABASE_URL": server_url, "CHRONOS2_MODEL": str(tiny_checkpoint), "PREDICT_API_TOKEN": ""}

    refused = subprocess.run(
        [sys.executable, "-m", "forecasting_pipeline.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port()),
         "--no-socket"], env=env, capture_output=True, text=True, timeout=120,
    )

    assert refused.returncode == 2
    assert ("refusing to listen on 0.0.0.0 without PREDICT_API_TOKEN: every forecast and read endpoint would be open to "
            "anyone who can reach this address") in refused.stderr


# A small body limit, a deadline no request can meet (the batch window alone is longer), and the
# dashboard and showcase left open despite the token.
LIMITED_ENV = {"PREDICT_API_TOKEN": SERVICE_TOKEN, "PREDICT_MAX_BODY_BYTES": "200000", "PREDICT_DEADLINE_S": "0.001",
               "SERVE_PUBLIC_DASHBOARD": "true"}


@pytest.fixture(scope="module")
def limited(module_database_url, tiny_checkpoint, tmp_path_factory):
    running = start_service(module_database_url, tiny_checkpoint, tmp_path_factory.mktemp("limited") / "service.log",
                            LIMITED_ENV)
    try:
        yield running
    finally:
        stop_service(running)


def test_when_the_body_is_over_the_size_limit_then_413_before_it_is_read(limited):
    body = json.dumps(_adhoc(GOOD * 12)).encode()
    assert len(body) > int(LIMITED_ENV["PREDICT_MAX_BODY_BYTES"])

    status, answer, _ = limited.post(PREDICT, raw=body)

    assert status == 413
    assert answer["errors"][0]["field"] == "body" and "over the limit of 200000" in answer["errors"][0]["reason"]


def test_when_a_request_cannot_start_within_its_deadline_then_503_asks_to_retry_and_nothing_is_computed(limited):
    status, answer, headers = limited.post(PREDICT, {"symbol": "AAPL", "timeframe": "1d", "context_length": CONTEXT})

    assert status == 503
    assert answer == {"errors": [{"field": None, "reason": "the request was not started within its deadline"}]}
    assert headers["retry-after"] == "1"
    assert _metric(limited, "forecast_rejections", "forecast_rejections_total", reason="deadline") == 1
    assert _http_calls(limited) == 0


def test_when_the_dashboard_is_public_then_it_and_the_showcase_need_no_token_and_the_rest_still_does(limited):
    open_paths = ["/", "/static/dashboard.js", "/showcase/instruments", "/healthz", "/readyz"]

    assert [http_json("GET", limited.url + path)[0] for path in open_paths] == [200] * len(open_paths)
    assert [http_json("GET", limited.url + path)[0] for path in ("/metrics", "/openapi.json")] == [401, 401]
    assert http_json("POST", limited.url + PREDICT, {"symbol": "AAPL", "timeframe": "1d"})[0] == 401


def test_when_the_forecast_service_is_ready_then_the_status_check_passes_with_its_model_version(service):
    from forecasting_pipeline.orchestration.status import check_service

    check = check_service(service.url, required=True)

    assert check.state == "ok"
    assert check.details["status"] == "ready" and "RANDOM-WEIGHTS" in check.details["model_version"]
