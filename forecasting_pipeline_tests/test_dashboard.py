"""The dashboard at `/` and the reads behind it: `forecasting-pipeline serve` on loopback, headless Debian Chromium.

The service reads bars from files (the `files` source) holding the sample source's daily bars of
AAPL, ETH-USD and EURUSD, which have forecasts, and of NVDA, which has none; no other instrument
of the universe has a file, so none has bars. The database holds the last 40 daily windows of
those three instruments: Chronos-2's forecasts made by the chain's own functions with the tiny
model, Kronos's in the shape Kronos writes (it cannot run here: a stand-in that knows the realised
path, plus noise, where it has come; a drift from the last close where it has not), the
ensemble's made from those by its own run (a short warm-up, so its weights move), and the scores
of every realised forecast, made by the scoring run. BTC-USD, the universe's first instrument,
has no rows: the page must not open on it. Before any of this is stored, the page is looked at once
over the empty database.

The reads are checked over HTTP against the tables they come from; the page in one Chromium for
the module: first view, model toggle, each panel, empty panels, and refresh without a reload.
Screenshots go to ``test-artifacts/`` (`make screenshots` copies the documented ones into docs/images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import polars as pl
import psycopg
import pytest

from forecasting_pipeline.ensemble.window_ensembles import EnsembleParams, ensemble_windows, write_run
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.forecasting.window_forecasts import forecast_windows
from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.calendars import next_bar_closes
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources import FileSource, SampleSource
from forecasting_pipeline.market.validation import ValidationConfig
from forecasting_pipeline.market.window_bars import read_window_bars
from forecasting_pipeline.scoring.evaluation import score_new_forecasts
from forecasting_pipeline.storage.ml_predictions import write_windows
from forecasting_pipeline_tests.conftest import (
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    DAILY_WINDOWS,
    BarFiles,
    ServiceProcess,
    http_json,
    skilful_kronos,
    start_service,
    stop_service,
    write_kronos_rows,
)

SYMBOLS = ("AAPL", "ETH-USD", "EURUSD")
BARS_ONLY = "NVDA"
NO_BARS = "MSFT"
WINDOWS = 40
HISTORY_BARS = 400
CHALLENGER = "chronos-2-ft-demo"
WAIT_S = 30

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing (see test_browser.py)",
)


def _write_bar_files(root: Path, now: datetime) -> FileSource:
    universe = select_instruments(load_instruments(), (*SYMBOLS, BARS_ONLY))
    bars, _ = SampleSource().bars(universe, "1d", now, HISTORY_BARS)
    files = BarFiles(root)
    for (symbol,), frame in bars.partition_by("symbol", as_dict=True).items():
        files.write(symbol, frame)
    return FileSource(root)


def _store_forecasts(conn: psycopg.Connection, source: FileSource, checkpoint, now: datetime) -> None:
    """Chronos-2, Kronos and the ensemble over the last WINDOWS daily windows, then the scoring run."""
    universe = select_instruments(load_instruments(), SYMBOLS)
    keys = [(now.date() - timedelta(days=k)).isoformat() for k in range(WINDOWS, 0, -1)]
    ends = DAILY_WINDOWS.ends(keys)
    read = read_window_bars(source, universe, "1d", ends, 128, ValidationConfig())
    calendar_of = {i.symbol: i.calendar for i in universe}
    result = forecast_windows(
        {w: engineer_covariates(b) for w, b in read.bars.items()},
        lambda s, a, n: next_bar_closes(calendar_of[s], "1d", a, n), Chronos2Runner(model=str(checkpoint), device="cpu"),
        DAILY.horizon, 128,
    )
    write_windows(conn, result.forecasts, "1d")
    origins = sorted(set(pl.concat(result.forecasts.values())["as_of"].to_list()))
    bars, _ = source.bars(universe, "1d", now, HISTORY_BARS)
    realised = skilful_kronos(bars, origins, DAILY.horizon)
    write_kronos_rows(conn, realised + _drifting_kronos(bars, origins, {(s, c) for s, _, c, _ in realised}, calendar_of))
    run = ensemble_windows(conn, DAILY, source, universe, ends, EnsembleParams(lookback=40, warmup=3, shrinkage=2.0))
    write_run(conn, run)
    score_new_forecasts(conn, DAILY, source, universe, now)


def _drifting_kronos(bars: pl.DataFrame, origins, done, calendar_of) -> list[tuple]:
    """Kronos rows for the origins whose path has not come yet: a drift up from the last close."""
    rows = []
    for symbol, ts, close in bars.select("symbol", "ts", "close").iter_rows():
        if ts in origins and (symbol, ts) not in done:
            steps = [(t, close * (1 + 0.004 * i)) for i, t in
                     enumerate(next_bar_closes(calendar_of[symbol], "1d", ts, DAILY.horizon), start=1)]
            rows.append((symbol, "1d", ts, steps))
    return rows


@dataclass(frozen=True)
class EmptyPage:
    """What the page showed while the database had no row."""

    banner: str
    panels: dict[str, str]
    reasons: dict[str, str]
    error: str


@dataclass
class Dashboard:
    """The running service, its database, the folder of its bar files, and the page seen before any row."""

    service: ServiceProcess
    database_url: str
    bar_root: Path
    empty_page: EmptyPage

    @property
    def url(self) -> str:
        return self.service.url


@pytest.fixture(scope="module")
def dashboard(module_database_url, tiny_checkpoint, tmp_path_factory, module_browser):
    """The service over the seeded database; before seeding, the page is looked at once (one service start, not two)."""
    now = datetime.now(timezone.utc)
    root = tmp_path_factory.mktemp("bars")
    source = _write_bar_files(root, now)
    running = start_service(module_database_url, tiny_checkpoint, tmp_path_factory.mktemp("dashboard") / "service.log",
                            {"MARKET_DATA_SOURCE": "files", "MARKET_DATA_PATH": str(root)})
    try:
        empty_page = _look_at_the_empty_page(module_browser, running.url)
        with psycopg.connect(module_database_url, autocommit=True) as conn:
            _store_forecasts(conn, source, tiny_checkpoint, now)
        yield Dashboard(running, module_database_url, root, empty_page)
    finally:
        stop_service(running)


def _look_at_the_empty_page(driver, url: str) -> EmptyPage:
    _open(driver, url + "/?refresh=0")
    _shot(driver, "dashboard-empty.png")
    return EmptyPage(
        banner=_text(driver, "empty-view"), panels=_panels(driver),
        reasons={key: _text(driver, f"{key}-empty") for key in ("chart", "outcomes", "rolling", "weights")},
        error=_text(driver, "error"),
    )


def _get(service, path: str, **params):
    status, body, _ = http_json("GET", service.url + path + ("?" + urlencode(params) if params else ""))
    return status, body


# ---- the reads ---------------------------------------------------------------------------------


def test_when_the_models_are_listed_then_each_model_with_rows_has_a_kind_and_the_first_view_has_rows(dashboard):
    status, body = _get(dashboard, "/showcase/models")

    assert status == 200
    assert [(m["model_name"], m["label"], m["kind"]) for m in body["models"]] == [
        ("kronos-base", "Kronos base", "incumbent"), ("chronos-2", "Chronos-2", "zero-shot"),
        ("ensemble", "Ensemble", "ensemble")]
    assert all(sorted(s["symbol"] for s in m["series"]) == sorted(SYMBOLS) for m in body["models"])
    # BTC-USD comes first in the universe but has no rows; ETH-USD is the first that has.
    assert body["first_view"] == {"model_name": "kronos-base", "timeframe": "1d", "symbol": "ETH-USD"}
    assert body["empty_reason"] is None


def test_when_past_forecasts_are_asked_then_each_step_carries_the_close_that_came(dashboard):
    status, body = _get(dashboard, "/showcase/past-forecasts", symbol="AAPL", timeframe="1d", model="chronos-2", origins=5)

    with psycopg.connect(dashboard.database_url) as conn:
        stored = conn.execute(
            "SELECT as_of, predictions FROM ml_predictions WHERE model_name = 'chronos-2' AND timeframe = '1d' "
            "AND symbol = 'AAPL' ORDER BY as_of DESC LIMIT 5").fetchall()[::-1]
    closes = dict(pl.read_parquet(dashboard.bar_root / "1d" / "AAPL.parquet").select("ts", "close").iter_rows())
    assert status == 200 and body["empty_reason"] is None and body["bars_note"] is None
    assert [datetime.fromisoformat(f["as_of"]) for f in body["forecasts"]] == [as_of for as_of, _ in stored]
    for answer, (_, steps) in zip(body["forecasts"], stored, strict=True):
        came = [closes.get(datetime.fromisoformat(s["ts"])) for s in steps]
        assert [s["close"] for s in answer["steps"]] == came
        assert [s["p50"] for s in answer["steps"]] == [s["p50"] for s in steps]
        assert answer["realised_steps"] == sum(c is not None for c in came)
        assert answer["inside_band"] == sum(c is not None and s["p10"] <= c <= s["p90"] for c, s in zip(came, steps))
    # The newest forecast's horizon lies ahead: its steps wait for their closes.
    assert body["forecasts"][-1]["realised_steps"] < DAILY.horizon
    # The closes start one horizon before the first origin.
    first = datetime.fromisoformat(body["forecasts"][0]["as_of"])
    assert sum(datetime.fromisoformat(b["ts"]) <= first for b in body["bars"]) == DAILY.horizon


def test_when_rolling_scores_are_asked_then_each_point_pools_the_stored_losses_of_the_last_window_dates(dashboard):
    status, body = _get(dashboard, "/showcase/rolling-scores", symbol="EURUSD", timeframe="1d", window=5)

    with psycopg.connect(dashboard.database_url) as conn:
        last5 = conn.execute(
            "SELECT n_steps, scaled_abs_error, n_below_p10, n_above_p90 FROM forecast_losses WHERE timeframe = '1d' "
            "AND model_name = 'chronos-2' AND symbol = 'EURUSD' ORDER BY as_of DESC LIMIT 5").fetchall()
        dates = conn.execute("SELECT count(*) FROM forecast_losses WHERE timeframe = '1d' AND model_name = 'chronos-2' "
                             "AND symbol = 'EURUSD'").fetchone()[0]
    steps = sum(n for n, *_ in last5)
    by_model = {m["model_name"]: m for m in body["models"]}
    assert status == 200 and body["empty_reason"] is None
    assert list(by_model) == ["kronos-base", "chronos-2", "ensemble", "baseline-random-walk", "baseline-rw-vol"]
    newest = by_model["chronos-2"]["points"][-1]
    assert len(by_model["chronos-2"]["points"]) == dates
    assert newest["n_obs"] == steps
    assert newest["coverage_p10_p90"] == pytest.approx(sum(n - lo - hi for n, _, lo, hi in last5) / steps)
    assert newest["scaled_mae"] == pytest.approx(sum(n * e for n, e, *_ in last5) / steps)
    # Kronos has no band, and the random walk is what relative errors are measured against.
    assert {p["coverage_p10_p90"] for p in by_model["kronos-base"]["points"]} == {None}
    assert {p["relative_mae"] for p in by_model["baseline-random-walk"]["points"]} == {None}


def test_when_ensemble_weights_are_asked_then_each_forecast_has_its_stored_weights_oldest_first(dashboard):
    status, body = _get(dashboard, "/showcase/ensemble-weights", symbol="ETH-USD", timeframe="1d")

    with psycopg.connect(dashboard.database_url) as conn:
        stored = conn.execute("SELECT as_of, weights, details FROM ensemble_weights WHERE timeframe = '1d' "
                              "AND symbol = 'ETH-USD' ORDER BY as_of").fetchall()
    assert status == 200 and body["empty_reason"] is None
    assert body["members"] == ["chronos-2", "kronos-base", "baseline-rw-vol"]
    assert [datetime.fromisoformat(p["as_of"]) for p in body["points"]] == [as_of for as_of, *_ in stored]
    assert [p["location"] for p in body["points"]] == [{m: w["location"] for m, w in weights.items()} for _, weights, _ in stored]
    assert [p["band"]["kronos-base"] for p in body["points"]] == [None] * len(stored)
    assert [p["warm_up"] for p in body["points"]] == [details["warm_up"] for *_, details in stored]
    # Equal while warming up, then led by what has been right: the stand-in for Kronos knows the path.
    assert body["points"][0]["warm_up"] and not body["points"][-1]["warm_up"]
    assert body["points"][-1]["location"]["kronos-base"] > 0.5


@pytest.mark.parametrize("symbol", [BARS_ONLY, NO_BARS])
def test_when_an_instrument_has_no_rows_then_each_read_answers_empty_with_the_reason(dashboard, symbol):
    past = _get(dashboard, "/showcase/past-forecasts", symbol=symbol, timeframe="1d", model="chronos-2")
    rolling = _get(dashboard, "/showcase/rolling-scores", symbol=symbol, timeframe="1d")
    weights = _get(dashboard, "/showcase/ensemble-weights", symbol=symbol, timeframe="1d")

    assert past == (200, {"symbol": symbol, "timeframe": "1d", "model_name": "chronos-2", "label": "Chronos-2",
                          "kind": "zero-shot", "forecasts": [], "bars": [], "bars_note": None, "unreadable_rows": [],
                          "empty_reason": f"no chronos-2 1d forecasts of {symbol} are stored"})
    assert rolling[1]["models"] == [] and rolling[1]["empty_reason"] == (
        f"no scored 1d forecasts of {symbol} yet: a forecast is scored once its whole horizon has closed (forecast_scores_1d)")
    assert weights[1]["points"] == [] and weights[1]["empty_reason"] == (
        f"no ensemble 1d forecasts of {symbol} are stored: the ensemble writes its weights with each forecast it makes")


def test_when_a_model_has_no_rows_at_all_then_past_forecasts_say_so_and_list_the_models_that_have(dashboard):
    status, body = _get(dashboard, "/showcase/past-forecasts", symbol="AAPL", timeframe="1d", model="kronos-large")

    assert status == 200 and body["kind"] == "challenger"
    assert body["empty_reason"] == "no kronos-large forecasts are stored at all; models with rows: chronos-2, ensemble, kronos-base"


@pytest.mark.parametrize("path, params, status, field", [
    ("/showcase/past-forecasts", {"symbol": "ZZZ", "timeframe": "1d", "model": "chronos-2"}, 422, "symbol"),
    ("/showcase/past-forecasts", {"symbol": "aapl", "timeframe": "1d", "model": "chronos-2"}, 422, "symbol"),
    ("/showcase/past-forecasts", {"symbol": "AAPL", "timeframe": "1d"}, 422, "model"),
    ("/showcase/past-forecasts", {"symbol": "AAPL", "timeframe": "1d", "model": "chronos-2", "origins": 21}, 422, "origins"),
    ("/showcase/rolling-scores", {"symbol": "AAPL", "timeframe": "1w"}, 422, "timeframe"),
    ("/showcase/rolling-scores", {"symbol": "AAPL", "timeframe": "1d", "span": 3}, 400, "span"),
    ("/showcase/ensemble-weights", {"timeframe": "1d"}, 422, "symbol"),
    ("/showcase/ensemble-weights", {"symbol": "AAPL", "timeframe": "1d", "last": 0}, 422, "last"),
])
def test_when_a_parameter_is_bad_then_the_answer_names_it(dashboard, path, params, status, field):
    answer = _get(dashboard, path, **params)

    assert answer[0] == status
    assert [e["field"] for e in answer[1]["errors"]] == [field]


def test_when_the_openapi_schema_is_read_then_the_new_reads_declare_their_parameters_and_answers(dashboard):
    status, spec = _get(dashboard, "/openapi.json")

    past = spec["paths"]["/showcase/past-forecasts"]["get"]
    assert status == 200
    assert {p["name"]: p["required"] for p in past["parameters"]} == {
        "symbol": True, "timeframe": True, "model": True, "origins": False}
    assert set(past["responses"]) == {"200", "400", "401", "422", "503"}
    assert past["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PastForecastsAnswer"}
    for path in ("/showcase/models", "/showcase/rolling-scores", "/showcase/ensemble-weights"):
        assert "$ref" in spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


# ---- the page ----------------------------------------------------------------------------------


def _open(driver, url: str) -> None:
    driver.get(url)
    _ready(driver)


def _ready(driver, models: str | None = None) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
        "return document.body.dataset.state === 'ready' && (arguments[0] === null || document.body.dataset.models === arguments[0])",
        models))


def _legend(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#chart .u-legend .u-series .u-label')].map(e => e.textContent)")


def _panels(driver) -> dict[str, str]:
    return driver.execute_script("return Object.fromEntries([...document.querySelectorAll('.panel')].map(p => [p.id, p.dataset.state]))")


def _text(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent.trim()", element_id)


def _shot(driver, name: str, element_id: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    if element_id is None:
        driver.save_screenshot(str(ARTIFACTS / name))
    else:
        driver.find_element(By.ID, element_id).screenshot(str(ARTIFACTS / name))


def _whole_page_shots(driver, name: str, panels: tuple[str, ...]) -> None:
    """Screenshots of the whole page and of each of ``panels``: the window made as tall as the page, then put back."""
    width, height = driver.get_window_size().values()
    driver.set_window_size(width, driver.execute_script("return document.documentElement.scrollHeight") + 140)
    _ready(driver)
    _shot(driver, f"{name}.png")
    for panel in panels:
        _shot(driver, f"{name}-{panel}.png", panel)
    driver.set_window_size(width, height)
    _ready(driver)


def _choose(driver, symbol: str, models: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "symbol")).select_by_value(symbol)
    _ready(driver, models)
    assert _text(driver, "chart-title").startswith(f"{symbol} 1d")


def _switch(driver, choice: str, drawn: str) -> list[str]:
    """Pick ``choice`` on the model toggle, wait until ``drawn`` (comma-joined models) is on the chart: its legend."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"model-{choice}").click()
    _ready(driver, drawn)
    return _legend(driver)


def test_when_the_page_opens_then_it_shows_an_instrument_and_model_that_have_rows(dashboard, module_browser):
    from selenium.webdriver.common.by import By

    _open(module_browser, dashboard.url + "/?refresh=0")

    assert module_browser.find_element(By.ID, "symbol").get_attribute("value") == "ETH-USD"
    assert module_browser.find_element(By.ID, "model-kronos-base").is_selected()
    assert _legend(module_browser)[1:] == ["ETH-USD close", "kronos-base"]
    assert _panels(module_browser) == {p: "ready" for p in
                                       ("chart-panel", "scores-panel", "outcomes-panel", "rolling-panel", "weights-panel")}
    assert [o.text for o in module_browser.find_elements(By.CSS_SELECTOR, "#symbol option")][:2] == [
        "BTC-USD (crypto, 24/7) · no forecasts", "ETH-USD (crypto, 24/7)"]
    assert not module_browser.find_element(By.ID, "empty-view").is_displayed()


def test_when_the_model_toggle_switches_then_every_panel_follows_the_models(dashboard, module_browser):
    from selenium.webdriver.common.by import By

    _open(module_browser, dashboard.url + "/?refresh=0&origins=5")
    _choose(module_browser, "AAPL", "kronos-base")
    kronos = _legend(module_browser)
    chronos = _switch(module_browser, "chronos-2", "chronos-2")
    chronos_fans = module_browser.execute_script("return document.getElementById('outcomes-panel').dataset.series")
    chronos_notes = _text(module_browser, "outcomes-notes")
    ensemble = _switch(module_browser, "ensemble", "ensemble")
    _whole_page_shots(module_browser, "dashboard", ("chart-panel", "outcomes-panel", "rolling-panel", "weights-panel"))
    every = _switch(module_browser, "all", "kronos-base,chronos-2,ensemble")

    assert kronos[1:] == ["AAPL close", "kronos-base"]
    assert chronos[1:] == ["AAPL close", "chronos-2 p50", "chronos-2 p10", "chronos-2 p90"]
    assert ensemble[1:] == ["AAPL close", "ensemble p50", "ensemble p10", "ensemble p90"]
    assert every[1:] == ["AAPL close", "kronos-base", "chronos-2 p50", "chronos-2 p10", "chronos-2 p90",
                         "ensemble p50", "ensemble p10", "ensemble p90"]
    # The realised closes and five fans of three lines each; with every model, five p50 lines each.
    assert chronos_fans == "16"
    assert module_browser.execute_script("return document.getElementById('outcomes-panel').dataset.series") == "16"
    assert chronos_notes.startswith("chronos-2: 5 forecasts, ")
    assert "inside p10–p90" in chronos_notes
    weights = [r.get_attribute("data-member") for r in module_browser.find_elements(By.CSS_SELECTOR, "#weights-latest tbody tr")]
    assert weights == ["chronos-2", "kronos-base", "baseline-rw-vol"]
    assert "– (no band)" in module_browser.find_element(By.CSS_SELECTOR, "#weights-latest tr[data-member=kronos-base]").text
    models = [row.get_attribute("data-model") for row in module_browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")]
    assert models == ["baseline-random-walk", "baseline-rw-vol", "chronos-2", "ensemble", "kronos-base"]
    assert _text(module_browser, "error") == ""


def test_when_an_instrument_has_no_rows_or_no_bars_then_each_panel_says_why(dashboard, module_browser):
    _open(module_browser, dashboard.url + "/?refresh=0&model=chronos-2")
    _choose(module_browser, BARS_ONLY, "chronos-2")
    bars_only = (_panels(module_browser), _text(module_browser, "forecast-notes"), _text(module_browser, "outcomes-empty"),
                 _text(module_browser, "rolling-empty"), _text(module_browser, "weights-empty"))
    _shot(module_browser, "dashboard-no-rows.png")
    _choose(module_browser, NO_BARS, "chronos-2")
    nothing = (_panels(module_browser), _text(module_browser, "chart-empty"), _text(module_browser, "forecast-notes"))

    assert bars_only[0] == {"chart-panel": "ready", "scores-panel": "ready", "outcomes-panel": "empty",
                            "rolling-panel": "empty", "weights-panel": "empty"}
    assert bars_only[1].startswith("chronos-2: no stored forecast for NVDA 1d")
    assert bars_only[2:] == ("no chronos-2 1d forecasts of NVDA are stored.",
                             "no scored 1d forecasts of NVDA yet: a forecast is scored once its whole horizon has closed "
                             "(forecast_scores_1d).",
                             "no ensemble 1d forecasts of NVDA are stored: the ensemble writes its weights with each "
                             "forecast it makes.")
    assert nothing[0]["chart-panel"] == "empty"
    assert nothing[1] == "Nothing to draw for MSFT 1d: no bars and no stored forecast of chronos-2."
    assert nothing[2].startswith("No bars of MSFT 1d: the market-data source cannot read MSFT: ")
    assert _text(module_browser, "error") == ""


def test_when_rows_arrive_then_the_page_shows_them_without_a_reload(dashboard, module_browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(module_browser, dashboard.url + "/?refresh=1")
    module_browser.execute_script("window.sameDocument = true")
    with psycopg.connect(dashboard.database_url, autocommit=True) as conn:
        # A fine-tuned challenger's row, written under its own model_name: here Chronos-2's newest, moved up 1%.
        as_of, steps = conn.execute("SELECT as_of, predictions FROM ml_predictions WHERE model_name = 'chronos-2' "
                                    "AND symbol = 'ETH-USD' ORDER BY as_of DESC LIMIT 1").fetchone()
        moved = [{**s, **{k: s[k] * 1.01 for k in ("p10", "p50", "p90", "close")}} for s in steps]
        conn.execute("INSERT INTO ml_predictions (symbol, timeframe, model_name, model_version, as_of, predictions) "
                     "VALUES ('ETH-USD', '1d', %s, 'ft-1', %s, %s::jsonb)", (CHALLENGER, as_of, json.dumps(moved)))
        try:
            toggle = WebDriverWait(module_browser, WAIT_S).until(lambda d: d.find_elements(By.ID, f"model-{CHALLENGER}"))
            kind = toggle[0].find_element(By.XPATH, "..").text
            legend = _switch(module_browser, CHALLENGER, CHALLENGER)
            same = module_browser.execute_script("return window.sameDocument === true")
        finally:
            conn.execute("DELETE FROM ml_predictions WHERE model_name = %s", (CHALLENGER,))

    assert kind == f"{CHALLENGER} challenger"
    assert legend[1:] == ["ETH-USD close", f"{CHALLENGER} p50", f"{CHALLENGER} p10", f"{CHALLENGER} p90"]
    assert same


def test_when_no_model_has_rows_then_the_page_says_why_in_one_line_and_every_panel_too(dashboard):
    page = dashboard.empty_page

    assert page.banner == ("No forecasts yet: ml_predictions has no rows. Materialise a window (`make run`) or backfill, "
                           "and this page shows them at its next refresh.")
    # The universe's first instrument, without rows and, in these bar files, without bars.
    assert page.panels == {"chart-panel": "empty", "scores-panel": "ready", "outcomes-panel": "empty",
                           "rolling-panel": "empty", "weights-panel": "empty"}
    assert page.reasons == {
        "chart": "Nothing to draw for BTC-USD 1d: no bars and no stored forecast of kronos-base.",
        "outcomes": "no kronos-base forecasts are stored at all; models with rows: (none).",
        "rolling": "no scored 1d forecasts of BTC-USD yet: a forecast is scored once its whole horizon has closed "
                   "(forecast_scores_1d).",
        "weights": "no ensemble 1d forecasts of BTC-USD are stored: the ensemble writes its weights with each forecast "
                   "it makes.",
    }
    assert page.error == ""
