"""The dashboard at `/` in a real browser: `forecasting-pipeline serve` on loopback, headless Debian Chromium.

The database holds the latest daily forecast of three instruments from both models and their
ensemble: Chronos-2's made by the chain's own functions with the tiny model, Kronos's in the shape
Kronos writes (its model cannot run here), the ensemble's combined from those two and the
random-walk baseline by the ensemble's own run (equal weights: no history is scored yet), and
stored scores. The test picks an instrument, switches the model toggle kronos-base -> chronos-2
-> ensemble -> all, and checks the chart's legend changes each time and that the scores table
shows the models. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import polars as pl
import psycopg
import pytest

from forecasting_pipeline.ensemble.window_ensembles import ensemble_windows, write_run
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.forecasting.window_forecasts import forecast_windows
from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.calendars import next_bar_closes
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources import SampleSource
from forecasting_pipeline.market.validation import ValidationConfig
from forecasting_pipeline.market.window_bars import read_window_bars
from forecasting_pipeline.storage.ml_predictions import write_windows
from forecasting_pipeline_tests.conftest import (
    ARTIFACTS,
    CHROMEDRIVER,
    CHROMIUM,
    start_service,
    stop_service,
    store_scores,
)

SYMBOLS = ("AAPL", "BTC-USD", "EURUSD")
WAIT_S = 30

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing (see test_browser.py)",
)


def _store_forecasts(conn: psycopg.Connection, checkpoint) -> None:
    """Both models' and the ensemble's latest daily forecast for SYMBOLS, ending at the newest closed bar."""
    universe = select_instruments(load_instruments(), SYMBOLS)
    now = datetime.now(timezone.utc)
    read = read_window_bars(SampleSource(), universe, "1d", {"latest": now}, 128, ValidationConfig())
    calendar_of = {i.symbol: i.calendar for i in universe}
    result = forecast_windows(
        {"latest": engineer_covariates(read.bars["latest"])},
        lambda s, a, n: next_bar_closes(calendar_of[s], "1d", a, n), Chronos2Runner(model=str(checkpoint), device="cpu"),
        10, 128,
    )
    write_windows(conn, {"latest": result.forecasts["latest"]}, "1d")
    last = read.bars["latest"].group_by("symbol").agg(pl.col("ts").last(), pl.col("close").last())
    for symbol, as_of, close in last.iter_rows():
        steps = [{"ts": ts.isoformat(), "close": close * (1 + 0.004 * i)}
                 for i, ts in enumerate(next_bar_closes(calendar_of[symbol], "1d", as_of, 10), start=1)]
        conn.execute(
            "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
            (symbol, json.dumps(steps), as_of + timedelta(minutes=30)),
        )
    ensembles = ensemble_windows(conn, DAILY, SampleSource(), universe, {"latest": now})
    assert write_run(conn, ensembles)["latest"] == len(SYMBOLS)


def _store_scores(conn: psycopg.Connection) -> None:
    rows = [(model, symbol, step, levels, 120, pinball, coverage, rel)
            for symbol in SYMBOLS for step in (1, 2)
            for model, levels, pinball, coverage, rel in (
                ("chronos-2", 3, 0.42, 0.78, 0.97), ("kronos-base", 1, 0.55, None, 1.08),
                ("baseline-random-walk", 1, 0.50, None, 1.0), ("baseline-rw-vol", 3, 0.47, 0.83, 1.0))]
    now = datetime.now(timezone.utc)
    store_scores(conn, "1d", rows, now, n_below_p10=12, n_above_p90=14, below_p10_rate=0.1, above_p90_rate=0.12,
                 first_as_of=now - timedelta(days=200), last_as_of=now - timedelta(days=11))


@pytest.fixture(scope="module")
def dashboard(module_database_url, tiny_checkpoint, tmp_path_factory):
    with psycopg.connect(module_database_url, autocommit=True) as conn:
        _store_forecasts(conn, tiny_checkpoint)
        _store_scores(conn)
    running = start_service(module_database_url, tiny_checkpoint, tmp_path_factory.mktemp("dashboard") / "service.log")
    try:
        yield running
    finally:
        stop_service(running)


def _ready(driver, models: str):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script(
        "return document.body.dataset.state === 'ready' && document.body.dataset.models === arguments[0]", models))


def _legend(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.u-legend .u-series .u-label')].map(e => e.textContent)")


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def _switch(driver, choice: str, drawn: str) -> list[str]:
    """Pick ``choice`` on the model toggle, wait until ``drawn`` (comma-joined models) is on the chart: its legend."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"model-{choice}").click()
    _ready(driver, drawn)
    _shot(driver, f"dashboard-{choice}.png")
    return _legend(driver)


def test_when_the_model_toggle_switches_then_the_chart_series_change_and_the_scores_show_the_models(dashboard, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(dashboard.url + "/")
    _ready(browser, "kronos-base")
    Select(browser.find_element(By.ID, "symbol")).select_by_value("AAPL")
    _ready(browser, "kronos-base")
    assert browser.find_element(By.ID, "chart-title").text.startswith("AAPL 1d")
    kronos = _legend(browser)
    _shot(browser, "dashboard-kronos-base.png")

    chronos = _switch(browser, "chronos-2", "chronos-2")
    ensemble = _switch(browser, "ensemble", "ensemble")
    every = _switch(browser, "all", "kronos-base,chronos-2,ensemble")

    assert kronos[1:] == ["AAPL close", "kronos-base"]
    assert chronos[1:] == ["AAPL close", "chronos-2 p50", "chronos-2 p10", "chronos-2 p90"]
    assert ensemble[1:] == ["AAPL close", "ensemble p50", "ensemble p10", "ensemble p90"]
    assert every[1:] == ["AAPL close", "kronos-base", "chronos-2 p50", "chronos-2 p10", "chronos-2 p90",
                         "ensemble p50", "ensemble p10", "ensemble p90"]
    # Drawn series, as the chart holds them (uPlot's series 0 is the time axis).
    assert browser.execute_script("return document.body.dataset.series") == "8"
    models = [row.get_attribute("data-model") for row in browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")]
    assert {"chronos-2", "kronos-base"} <= set(models)
    scores_text = browser.find_element(By.ID, "scores").text
    assert "chronos-2" in scores_text and "kronos-base †" in scores_text and "0.420 ★" in scores_text
    assert browser.find_element(By.ID, "error").text == ""
