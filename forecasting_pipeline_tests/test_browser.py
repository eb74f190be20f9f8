"""A real-browser check of the Dagster UI: dagster-webserver on loopback, headless Debian Chromium, one materialised window.

The instance lives in a temporary DAGSTER_HOME (SQLite storage); the window is materialised
there first with the real chain on the tiny model, so the UI shows what a run leaves behind.
Screenshots go to ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from forecasting_pipeline.orchestration.chain import build_chain
from forecasting_pipeline.serving.plots import FIGURE_DPI, fan_figure_size
from forecasting_pipeline_tests.conftest import ARTIFACTS, CHROMEDRIVER, CHROMIUM, DAILY_WINDOWS, SYMBOLS

WINDOW = "2025-06-02"
KRONOS_RUN = datetime(2025, 6, 3, 1, 0, tzinfo=timezone.utc)
KRONOS_SYMBOLS = ("AAPL", "BTC-USD", "EURUSD")
ASSETS = [f"{name}_{c}" for c in ("1h", "1d") for name in ("ohlcv", "covariates", "chronos2_forecasts", "ml_predictions")]
SCHEDULES = ["chronos2_1h_schedule", "chronos2_1d_schedule"]
WAIT_S = 30

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=(
        f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing, and `make test` could not install Debian's "
        "chromium and chromium-driver (apt-get unavailable or failed; see its output above)"
    ),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"dagster-webserver did not answer within 90 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def dagster_ui(tmp_path, resources, database_url, conn, tiny_checkpoint) -> Iterator[str]:
    """The URL of a dagster-webserver over an instance holding one materialised daily window."""
    # Kronos forecasts made an hour after the window closed, for three instruments: the fan overlays them.
    # They drift up from each instrument's last close, so the panels keep a readable scale.
    window_end = DAILY_WINDOWS.end_of(WINDOW)
    universe = [i for i in resources["instruments"].instruments() if i.symbol in KRONOS_SYMBOLS]
    bars, _ = resources["market_data"].bar_source().bars(universe, "1d", window_end, 1)
    for symbol, last_close in bars.select("symbol", "close").iter_rows():
        steps = [{"ts": (KRONOS_RUN + timedelta(days=i)).isoformat(), "close": last_close * (1 + 0.003 * i)}
                 for i in range(1, 11)]
        conn.execute(
            "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
            (symbol, json.dumps(steps), KRONOS_RUN),
        )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Marks the "Join the Dagster community" dialog as seen; it would cover every page.
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, resources=resources, instance=instance)
        assert result.success

    port = _free_port()
    log = tmp_path / "webserver.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": database_url,
           "CHRONOS2_MODEL": str(tiny_checkpoint)}
    with log.open("w") as out:
        # Its own session, so the code server it spawns stops with it.
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p", str(port),
             "-m", "forecasting_pipeline.definitions"],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_serving(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _missing(driver, names: list[str]) -> list[str]:
    """The names neither in the page's text nor the full title of a truncated label (the UI shortens long names)."""
    text = driver.find_element("tag name", "body").text
    titles = set(driver.execute_script("return [...document.querySelectorAll('[title]')].map(e => e.title)"))
    return [name for name in names if name not in text and name not in titles]


def _screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def test_when_a_window_is_materialised_then_the_ui_shows_both_chains_schedules_and_the_fan_chart(dagster_ui, browser):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(names: list[str], page: str) -> None:
        try:
            WebDriverWait(browser, WAIT_S).until(lambda d: not _missing(d, names))
        except TimeoutException:
            _screenshot(browser, f"failed-{page}.png")
            (ARTIFACTS / f"failed-{page}.html").write_text(browser.page_source)
            pytest.fail(f"{page}: {_missing(browser, names)} not on the page after {WAIT_S} s")

    # Groups start collapsed in the global graph; `expanded` opens both chains (ids are `global@global:<group>`).
    browser.get(f"{dagster_ui}/asset-groups?expanded=" + ",".join(f"global@global:chronos2_{c}" for c in ("1h", "1d")))
    wait_for([f"chronos2_{c}" for c in ("1h", "1d")], "asset-graph")
    # Graph nodes shorten long names ("chronos2_forec…_1d"); the sidebar tree keeps full names as titles.
    for c in ("1h", "1d"):
        browser.find_element(
            By.XPATH, f"//div[@title='chronos2_{c}']/ancestor::div[button[.//div[@aria-label='arrow_drop_down']]][1]"
            "/button[.//div[@aria-label='arrow_drop_down']]"
        ).click()
    wait_for(ASSETS, "asset-graph")
    _screenshot(browser, "asset-graph.png")

    browser.get(f"{dagster_ui}/automation")
    wait_for(SCHEDULES, "automation")
    _screenshot(browser, "automation.png")

    browser.get(f"{dagster_ui}/assets/ml_predictions_1d?view=events")
    wait_for(["forecast_fan", "forecast_fan_window", WINDOW, "kronos_overlay_instruments", "rows"], "asset-events")
    _screenshot(browser, "ml_predictions_1d-events.png")

    # The fan is a large markdown value: the metadata table shows a button that opens it in a dialog.
    button = browser.find_element(
        By.XPATH, "//tr[td[normalize-space()='forecast_fan']]//*[normalize-space(text())='[Show Markdown]']"
    )
    button.click()
    image = WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "img[src^='data:image/png;base64,']")
    )
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return arguments[0].complete", image))
    _screenshot(browser, "ml_predictions_1d-forecast-fan.png")
    natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert tuple(natural) == tuple(round(x * FIGURE_DPI) for x in fan_figure_size(23))
    assert f"Window {WINDOW}: 23 instruments, Kronos overlaid on 3." in browser.find_element(By.TAG_NAME, "body").text

