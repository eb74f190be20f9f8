"""The UTC rule against a database whose default TimeZone is America/New_York.

Python reads an instant without an offset as UTC; PostgreSQL reads one in the session's TimeZone.
Every connection the project opens runs in UTC, so the same stored rows give the same Kronos
matches, scores and ensemble rows on a New York database as on a UTC one. Kronos's rows are
written as Kronos may write them: step times without an offset, through a session of its own.
"""

import json
from datetime import datetime, timezone

import polars as pl
import psycopg
import pytest
from psycopg import sql

from forecasting_pipeline.ensemble.window_ensembles import ensemble_windows, write_run
from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import BarTable, FileSource, TableSource
from forecasting_pipeline.orchestration.instance_storage import PooledPostgresRunStorage
from forecasting_pipeline.orchestration.resources import PostgresResource
from forecasting_pipeline.scoring.evaluation import score_new_forecasts
from forecasting_pipeline.serving.showcase import latest_rows
from forecasting_pipeline.storage.database import connect, shared_pool
from forecasting_pipeline.storage.embedded_postgres import dagster_storage_url
from forecasting_pipeline.storage.ensemble_weights import read_ensemble_weights
from forecasting_pipeline.storage.forecast_scores import read_scores
from forecasting_pipeline.storage.kronos_rows import matching_kronos_forecasts
from forecasting_pipeline.storage.migrations import migrate
from forecasting_pipeline.storage.ml_predictions import read_predictions, upsert_window
from forecasting_pipeline_tests.conftest import _drop_database, _fresh_database, skilful_kronos
from forecasting_pipeline_tests.test_ensemble import (
    FIRST_ORIGIN,
    GOOG,
    HORIZON,
    PARAMS,
    WINDOW,
    WINDOWS,
    chronos_rows,
    sessions,
)

NEW_YORK = "America/New_York"
SCORED_UNTIL = datetime(2012, 7, 31, tzinfo=timezone.utc)


@pytest.fixture
def new_york_url(server_url):
    """A fresh database whose sessions default to New York time, migrated through the project's connection."""
    name, url = _fresh_database(server_url, "fp_new_york")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(sql.Identifier(name), sql.Literal(NEW_YORK)))
    with connect(url) as conn:
        migrate(conn)
    yield url
    _drop_database(server_url, name)


def session_zone(conn) -> str:
    return conn.execute("SHOW TimeZone").fetchone()[0]


def test_when_the_database_defaults_to_new_york_then_every_connection_the_project_opens_runs_in_utc(new_york_url):
    with psycopg.connect(new_york_url) as plain:
        assert session_zone(plain) == NEW_YORK
        plain.commit()
        migrate(plain)
        assert session_zone(plain) == "UTC"
    with PostgresResource(url=new_york_url).connection() as run_connection:
        assert session_zone(run_connection) == "UTC"
    with shared_pool(new_york_url).connection() as pooled:
        assert session_zone(pooled) == "UTC"
    storage = PooledPostgresRunStorage.from_config_value(
        None, {"postgres_url": dagster_storage_url(new_york_url), "should_autocreate_tables": False})
    with storage._engine.connect() as dagster_connection:
        assert dagster_connection.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
    storage.dispose()


def test_when_a_bar_table_holds_instants_without_an_offset_then_they_are_read_as_utc(new_york_url):
    with psycopg.connect(new_york_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE naive_bars (symbol text, timeframe text, ts timestamp, open float8, high float8, "
                     "low float8, close float8, volume float8)")
        # Three daily closes at 20:00 UTC, the last one after the end read below.
        conn.execute("INSERT INTO naive_bars SELECT 'GOOG', '1d', timestamp '2012-05-14 20:00' "
                     "+ make_interval(days => d), 1, 2, 0.5, 1.5, 10 FROM generate_series(0, 2) AS d")
    end = datetime(2012, 5, 15, 21, tzinfo=timezone.utc)

    bars, _ = TableSource(new_york_url, BarTable(table="naive_bars")).bars(GOOG, "1d", end, 5)

    assert bars["ts"].to_list() == [datetime(2012, 5, 14, 20, tzinfo=timezone.utc),
                                    datetime(2012, 5, 15, 20, tzinfo=timezone.utc)]


def test_when_bar_files_hold_instants_without_an_offset_then_they_are_read_as_utc(bar_files):
    closes = [datetime(2012, 5, 14, 20), datetime(2012, 5, 15, 20), datetime(2012, 5, 16, 20)]
    naive = pl.DataFrame({"ts": closes, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0})
    bar_files.write("GOOG", naive)  # a timestamp column without a zone
    text = bar_files.root / "1d" / "MSFT.csv"
    naive.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S")).write_csv(text)  # ISO text without an offset
    end = datetime(2012, 5, 15, 21, tzinfo=timezone.utc)

    bars, _ = FileSource(str(bar_files.root)).bars([*GOOG, Instrument("MSFT", "equity", "XNAS")], "1d", end, 5)

    utc = [datetime(2012, 5, 14, 20, tzinfo=timezone.utc), datetime(2012, 5, 15, 20, tzinfo=timezone.utc)]
    assert bars.select("symbol", "ts").sort("symbol", "ts").rows() == [("GOOG", t) for t in utc] + [("MSFT", t) for t in utc]


def write_kronos_naively(url: str, bars: pl.DataFrame, origins: list[datetime]) -> None:
    """Kronos's rows as it may write them: step times without an offset (meant as UTC), through its own session."""
    rows = [(symbol, timeframe, created_at,
             json.dumps([{"ts": ts.replace(tzinfo=None).isoformat(), "close": float(close)} for ts, close in steps]))
            for symbol, timeframe, created_at, steps in skilful_kronos(bars, origins, HORIZON)]
    with psycopg.connect(url, autocommit=True) as kronos, kronos.cursor() as cur:
        cur.executemany("INSERT INTO ml_predictions (symbol, timeframe, created_at, predictions) "
                        "VALUES (%s, %s, %s, %s::jsonb)", rows)


def everything_derived(url: str, bar_files, goog: pl.DataFrame) -> dict[str, object]:
    """Store the members, combine the window, score: what the project makes of the same rows on this database."""
    origins = sessions(goog, FIRST_ORIGIN, WINDOWS.end_of(WINDOW))
    write_kronos_naively(url, goog, origins)
    bar_files.write("GOOG", goog)
    source = FileSource(str(bar_files.root))
    with PostgresResource(url=url).connection() as conn:
        upsert_window(conn, chronos_rows(goog, origins))
        conn.commit()
        matched = matching_kronos_forecasts(conn, "1d", pl.DataFrame({"symbol": "GOOG", "as_of": origins}))
        write_run(conn, ensemble_windows(conn, DAILY, source, GOOG, WINDOWS.ends([WINDOW]), PARAMS))
        score_new_forecasts(conn, DAILY, source, GOOG, SCORED_UNTIL)
        return {
            "kronos": matched,
            "ensemble": read_predictions(conn, "1d", "ensemble").drop("created_at"),
            "weights": [{k: v for k, v in row.items() if k != "created_at"} for row in read_ensemble_weights(conn, "1d")],
            "scores": read_scores(conn, "1d", with_sums=True),
            "served_as_of": [row["as_of"] for row in latest_rows(conn, "ensemble", "1d", "GOOG")],
        }


def test_when_the_database_defaults_to_new_york_then_kronos_matches_scores_and_ensemble_rows_are_unchanged(
    database_url, new_york_url, real_bars, tmp_path
):
    from forecasting_pipeline_tests.conftest import BarFiles

    goog = real_bars("GOOG").filter(pl.col("ts") <= SCORED_UNTIL)
    in_utc = everything_derived(database_url, BarFiles(tmp_path / "utc"), goog)
    in_new_york = everything_derived(new_york_url, BarFiles(tmp_path / "ny"), goog)

    # Kronos's steps land on the sessions they forecast, as on a UTC database.
    closes = set(goog["ts"].to_list())
    assert in_new_york["kronos"].height > 0 and set(in_new_york["kronos"]["ts"].to_list()) <= closes
    assert in_new_york["kronos"].equals(in_utc["kronos"])
    assert in_new_york["ensemble"].height == HORIZON and in_new_york["ensemble"].equals(in_utc["ensemble"])
    assert in_new_york["weights"] == in_utc["weights"]
    scores_utc, scores_ny = (s.drop("scored_through") for s in (in_utc["scores"], in_new_york["scores"]))
    assert scores_ny.height > 0 and scores_ny.equals(scores_utc)
    assert in_new_york["served_as_of"] == in_utc["served_as_of"] == [in_utc["ensemble"]["as_of"][0].isoformat()]

