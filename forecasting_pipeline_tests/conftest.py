"""Shared fixtures: a real PostgreSQL database per test session, a locally built tiny Chronos-2, and resources.

The database is a fresh one on the server named by DATABASE_URL (``make test`` starts an embedded
server and sets it), or on a pgserver started here when DATABASE_URL is unset.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import psycopg
import pytest
from psycopg import sql

from forecasting_pipeline.forecasting.device import GPU_LOCK_KEY
from forecasting_pipeline.forecasting.inputs import model_inputs
from forecasting_pipeline.forecasting.model import write_random_checkpoint
from forecasting_pipeline.market.cadences import DAILY, HOURLY
from forecasting_pipeline.market.calendars import bar_closes
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import load_instruments
from forecasting_pipeline.market.sources.sample import sample_bars
from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import (
    Chronos2Resource,
    InstrumentsResource,
    MarketDataResource,
    PostgresResource,
)
from forecasting_pipeline.storage.embedded_postgres import _with_database, embedded_server
from forecasting_pipeline.storage.forecast_scores import write_scores
from forecasting_pipeline.storage.migrations import migrate

MODEL_CONTEXT = 64

# Debian's browser and driver for the real-browser tests (`make browser` installs them), and where screenshots go.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# The default cadences' windows and the default universe, as the code location builds them.
DAILY_WINDOWS = cadence_windows(DAILY)
HOURLY_WINDOWS = cadence_windows(HOURLY)
SYMBOLS = [i.symbol for i in load_instruments()]

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> Iterator[str]:
    """A URL on a real PostgreSQL server with rights to create databases."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    with embedded_server(tmp_path_factory.mktemp("pgdata")) as url:
        yield url


def _fresh_database(server_url: str, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, _with_database(server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_database_url(server_url) -> Iterator[str]:
    """A brand-new, empty database for one test."""
    name, url = _fresh_database(server_url, "fp_test")
    yield url
    _drop_database(server_url, name)


@pytest.fixture
def database_url(empty_database_url) -> str:
    """A fresh database with every migration applied."""
    with psycopg.connect(empty_database_url) as conn:
        migrate(conn)
    return empty_database_url


@pytest.fixture(scope="module")
def module_database_url(server_url) -> Iterator[str]:
    """A fresh migrated database shared by one test module (for a service process started once per module)."""
    name, url = _fresh_database(server_url, "fp_module")
    with psycopg.connect(url) as connection:
        migrate(connection)
    yield url
    _drop_database(server_url, name)


@pytest.fixture
def conn(database_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-initialised Chronos-2 checkpoint, built locally (no model hub)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("models") / "chronos2-tiny", "tiny")


@pytest.fixture
def resources(database_url, tiny_checkpoint, tmp_path) -> dict[str, object]:
    """The real resources on the sample source, the test database and the tiny checkpoint."""
    return {
        "database": PostgresResource(url=database_url),
        "instruments": InstrumentsResource(),
        "market_data": MarketDataResource(source="sample"),
        "chronos2": Chronos2Resource(model=str(tiny_checkpoint)),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(base_dir=str(tmp_path / "frames")),
    }


@pytest.fixture(scope="module")
def daily_inputs() -> list[dict]:
    """Model inputs (target + 2 covariates, 64 bars) for the 23 instruments of one daily window of the sample source."""
    end = DAILY_WINDOWS.end_of("2025-06-02")
    frames = [engineer_covariates(sample_bars(i, "1d", end, MODEL_CONTEXT)) for i in load_instruments()]
    _keys, model_in = model_inputs(pl.concat(frames), "2025-06-02", MODEL_CONTEXT)
    return model_in


SERVICE_TOKEN = "test-token-5f0c2a9e"  # noqa: S105 - a test value, searched for in logs to prove it never leaks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: object = None, headers: dict | None = None, raw: bytes | None = None):
    """(status, parsed JSON or text, headers) of one real HTTP request; error statuses are answers too."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text, answer_headers = response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, text, answer_headers = error.code, error.read().decode(), dict(error.headers)
    try:
        return status, json.loads(text), answer_headers
    except ValueError:
        return status, text, answer_headers


@dataclass
class ServiceProcess:
    """A running `forecasting-pipeline serve`: HTTP at ``url``, the runs' Unix socket at ``socket``."""

    url: str
    socket: str
    process: subprocess.Popen
    log: Path
    token: str | None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def post(self, path: str, body: object = None, **kwargs):
        return http_json("POST", self.url + path, body, {**self.auth(), **kwargs.pop("headers", {})}, **kwargs)

    def get(self, path: str):
        return http_json("GET", self.url + path, headers=self.auth())


def start_service(
    database_url: str, checkpoint: Path, log: Path, env: dict[str, str] | None = None, wait_ready: bool = True,
) -> ServiceProcess:
    """Start `forecasting-pipeline serve` on a free loopback port and wait until /readyz says ready (or, without
    ``wait_ready``, until it answers at all)."""
    folder = Path(tempfile.mkdtemp(prefix="svc-"))  # short: a Unix socket path is limited to 107 bytes
    socket_path, port = str(folder / "chronos2.sock"), free_port()
    full_env = {**os.environ, "DATABASE_URL": database_url, "CHRONOS2_MODEL": str(checkpoint),
                "CHRONOS2_DEVICE": "cpu", **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "forecasting_pipeline.cli", "serve", "--port", str(port), "--socket", socket_path],
            env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(f"http://127.0.0.1:{port}", socket_path, process, log, full_env.get("PREDICT_API_TOKEN"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status = service.get("/readyz")[0]
            if status == 200 or not wait_ready:
                return service
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    process.terminate()
    raise TimeoutError(f"the service was not ready within 120 s:\n{log.read_text()[-3000:]}")


def stop_service(service: ServiceProcess) -> None:
    service.process.terminate()
    service.process.wait(timeout=30)
    shutil.rmtree(Path(service.socket).parent, ignore_errors=True)


# The production defaults, with a token: what the service tests run against.
SERVICE_ENV = {"PREDICT_API_TOKEN": SERVICE_TOKEN}


@pytest.fixture(scope="module")
def service(module_database_url, tiny_checkpoint, tmp_path_factory) -> Iterator[ServiceProcess]:
    """`forecasting-pipeline serve` in its own process: the tiny checkpoint on the CPU, a token, every other setting
    at its default."""
    running = start_service(module_database_url, tiny_checkpoint, tmp_path_factory.mktemp("service") / "service.log",
                            SERVICE_ENV)
    try:
        yield running
    finally:
        stop_service(running)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


class BarFiles:
    """Bar files in the files source's layout under one root: ``{root}/{cadence}/{SYMBOL}.parquet|csv``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, symbol: str, bars, cadence: str = "1d", fmt: str = "parquet") -> Path:
        """Write a bars frame (its ``symbol`` column dropped, as files usually lack one)."""
        path = self.root / cadence / f"{symbol}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = bars.drop("symbol", strict=False)
        frame.write_parquet(path) if fmt == "parquet" else frame.write_csv(path)
        return path

    def write_bytes(self, symbol: str, content: bytes, cadence: str = "1d", fmt: str = "csv") -> Path:
        """Write raw bytes as a symbol's file (unreadable or mistyped files)."""
        path = self.root / cadence / f"{symbol}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path


# Real market history shipped by the `backtesting` package (a test dependency): daily GOOG on
# NASDAQ, 2004-08-19 to 2013-03-01, and hourly EUR/USD, 2017-04-19 to 2018-02-07.
REAL_BARS = {"GOOG": ("GOOG.csv", "XNAS", "1d"), "EURUSD": ("EURUSD.csv", "24/5", "1h")}


@functools.cache
def _real_bars(name: str) -> pl.DataFrame:
    # Found without importing the package, which would import its plotting stack.
    folder = Path(importlib.util.find_spec("backtesting").submodule_search_locations[0]) / "test"
    file, calendar, cadence = REAL_BARS[name]
    raw = pl.read_csv(folder / file).rename({"": "stamp", "Open": "open", "High": "high", "Low": "low",
                                             "Close": "close", "Volume": "volume"})
    if cadence == "1d":
        # Dated by session: each bar closes at its exchange's close that day (early closes included).
        closes = pl.Series("ts", bar_closes(calendar, cadence, datetime(2004, 8, 18), datetime(2013, 3, 2)))
        by_day = pl.DataFrame({"stamp": closes.dt.strftime("%Y-%m-%d"), "ts": closes})
        bars = raw.join(by_day, on="stamp", how="inner")
        assert bars.height == raw.height, "every GOOG session is a session of the XNAS calendar"
    else:
        # Stamped by the hour the bar opened, in UTC: it closes an hour later.
        bars = raw.with_columns(
            (pl.col("stamp").str.to_datetime(time_unit="us", time_zone="UTC") + pl.duration(hours=1)).alias("ts")
        )
    return bars.with_columns(pl.lit(name).alias("symbol"), pl.col("volume").cast(pl.Float64)).select(
        "symbol", "ts", "open", "high", "low", "close", "volume"
    )


def real_origins(bars: pl.DataFrame, context: int, count: int) -> list[dict]:
    """Model inputs of ``count`` windows spread over real bars, each the ``context`` bars up to its origin."""
    covariates = engineer_covariates(bars)
    ends = np.linspace(context, len(covariates), count, dtype=int)
    return [model_inputs(covariates.slice(end - context, context), "w", context)[1][0] for end in ends]


@pytest.fixture(scope="session")
def real_bars():
    """``real_bars(name)``: real OHLCV of ``GOOG`` (daily) or ``EURUSD`` (hourly) as a bars frame."""
    return _real_bars


@pytest.fixture
def bar_files(tmp_path) -> BarFiles:
    """An empty bar-file root for the ``files`` market-data source."""
    return BarFiles(tmp_path / "bars")


@dataclass
class KronosRequest:
    path: str
    headers: dict[str, str]
    body: dict
    gpu_lock_free: bool | None


class FakeKronosService:
    """Kronos's batch service, which cannot run here: an HTTP server on 127.0.0.1 that, per request,
    records it, notes whether the GPU advisory lock was free, writes ``rows`` kronos-base rows of the
    requested timeframe to the real database after ``delay_s``, and answers ``status`` with ``answer``.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.requests: list[KronosRequest] = []
        self.status, self.answer, self.rows, self.delay_s = 200, '{"status": "done"}', 23, 0.0
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with psycopg.connect(service.database_url, autocommit=True) as conn:
                    free = conn.execute("SELECT pg_try_advisory_lock(%s)", (GPU_LOCK_KEY,)).fetchone()[0]
                    if free:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (GPU_LOCK_KEY,))
                    service.requests.append(KronosRequest(self.path, dict(self.headers), body, free))
                    time.sleep(service.delay_s)
                    for i in range(service.rows):
                        conn.execute(
                            "INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES (%s, %s, '[]'::jsonb)",
                            (f"SYM{i}", body["timeframe"]),
                        )
                try:
                    self.send_response(service.status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(service.answer.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (timeout tests)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/batch"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def kronos_service(database_url) -> Iterator[FakeKronosService]:
    service = FakeKronosService(database_url)
    try:
        yield service
    finally:
        service.close()


def _chromium(profile: Path):
    """Headless Debian Chromium through chromedriver and Selenium, 1600x1000, its profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager then never tries to download a driver or browser.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium through chromedriver and Selenium, 1600x1000."""
    driver = _chromium(tmp_path / "chromium")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def module_browser(tmp_path_factory):
    """One Chromium for a whole module (starting one costs seconds); each test loads its own page."""
    driver = _chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


def store_scores(conn, timeframe: str, rows: list[tuple], scored_through, **columns) -> None:
    """Stored scores for readers of ``forecast_scores``: ``rows`` of (model, symbol, step, levels, n,
    mean_pinball, coverage_p10_p90, relative_mae); ``columns`` sets the other score columns, and
    each sum is its mean times ``n``, as the scoring run stores them."""
    frame = pl.DataFrame(rows, schema=["model_name", "symbol", "step", "levels", "n", "mean_pinball",
                                       "coverage_p10_p90", "relative_mae"], orient="row")
    frame = frame.with_columns(
        pinball_p10=pl.col("mean_pinball"), pinball_p50=pl.col("mean_pinball"), pinball_p90=pl.col("mean_pinball"),
        scaled_mae=pl.lit(1.0), scaled_rw_mae=pl.lit(1.0),
        **{name: pl.lit(value) for name, value in columns.items()},
    )
    sums = {f"sum_{name}": pl.col(name) * pl.col("n") for name in ("pinball_p10", "pinball_p50", "pinball_p90", "mean_pinball")}
    frame = frame.with_columns(
        **sums, sum_scaled_abs_error=pl.col("scaled_mae") * pl.col("n"),
        sum_scaled_rw_abs_error=pl.col("scaled_rw_mae") * pl.col("n"),
    )
    write_scores(conn, timeframe, frame, scored_through)


def write_kronos_rows(conn, rows) -> int:
    """Kronos rows as Kronos writes them: ``as_of`` NULL, ``{"ts", "close"}`` steps, ``created_at`` given.

    ``rows``: (symbol, timeframe, created_at, [(ts, close), ...]) per forecast.
    """
    payload = [
        (symbol, timeframe, json.dumps([{"ts": ts.isoformat(), "close": float(close)} for ts, close in steps]), created_at)
        for symbol, timeframe, created_at, steps in rows
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, %s, %s::jsonb, %s)",
            payload,
        )
    return len(payload)


def skilful_kronos(bars: pl.DataFrame, origins: list[datetime], horizon: int, timeframe: str = "1d",
                   noise: float = 0.5, seed: int = 7):
    """A skilful stand-in for Kronos, which cannot run here: from each origin (a bar close), the realised
    closes of the next ``horizon`` bars plus Gaussian noise of ``noise`` times the naive scale at the origin
    times sqrt(step), as (symbol, timeframe, created_at = origin, steps) rows for ``write_kronos_rows``.

    It knows the future, so its error is only the noise: about half a random walk's at every step.
    """
    from forecasting_pipeline.scoring.baselines import DEFAULT_VOL_WINDOW, history_stats

    rng = np.random.default_rng(seed)
    rows = []
    for (symbol,), mine in bars.partition_by("symbol", as_dict=True, maintain_order=True).items():
        mine = mine.sort("ts")
        stats = history_stats(mine.select("symbol", "ts", "close"), DEFAULT_VOL_WINDOW)
        ts, close, scale = mine["ts"].to_list(), mine["close"].to_numpy(), stats["naive_scale"].to_numpy()
        index = {t: i for i, t in enumerate(ts)}
        for origin in origins:
            i = index.get(origin)
            if i is None or i + horizon >= len(ts) or not np.isfinite(scale[i]):
                continue
            steps = [(ts[i + h], close[i + h] + noise * scale[i] * np.sqrt(h) * rng.standard_normal())
                     for h in range(1, horizon + 1)]
            rows.append((symbol, timeframe, origin, steps))
    return rows
