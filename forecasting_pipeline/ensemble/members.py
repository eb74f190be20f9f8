"""The ensemble's members at a set of forecast origins: where each forecast comes from, and why one is missing.

An *origin* is an instrument and an ``as_of`` (a bar close). Its *horizon* is the next ``H``
closes of the instrument's trading calendar, as the chain timestamps Chronos-2's steps. At an
origin, each member's forecast is:

* ``chronos-2``: its stored row with that ``as_of``;
* ``kronos-base``: its stored row matched to the origin by ``storage.kronos_rows``: the newest one
  written at or after ``as_of``, within one bar and before the next bar closed (Kronos stores no
  ``as_of``); a point forecast, without a band;
* ``baseline-rw-vol``: computed from the bars at or before ``as_of``, exactly as scoring computes it
  (``scoring.baselines.random_walk_baseline``).

A member forecasts an origin only when it covers every step of the horizon (matched by ``ts``);
otherwise it is missing there, with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

import numpy as np
import polars as pl
import psycopg

from forecasting_pipeline.market.calendars import bar_close_array, next_bar_closes
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.scoring.baselines import BASELINE_RW_VOL, MIN_HISTORY_CHANGES, random_walk_baseline
from forecasting_pipeline.scoring.frames import UTC
from forecasting_pipeline.storage.kronos_rows import TOLERANCE_TEXT, matching_kronos_forecasts
from forecasting_pipeline.storage.ml_predictions import KRONOS_MODEL_NAME, MODEL_NAME, read_predictions
from forecasting_pipeline.times import epoch_us

MEMBERS = (MODEL_NAME, KRONOS_MODEL_NAME, BASELINE_RW_VOL)
"""Every member, in the order weights are listed."""

POINT_MEMBERS = (KRONOS_MODEL_NAME,)
"""Members with a central forecast only: they move the band's location, never its width."""

BANDED_MEMBERS = tuple(m for m in MEMBERS if m not in POINT_MEMBERS)
MODEL_MEMBERS = (MODEL_NAME, KRONOS_MODEL_NAME)
"""Members that are stored forecasts; an ensemble needs at least one (the baseline alone is no ensemble)."""

LEVELS = ("p10", "p50", "p90")
_LAST_CLOSE_REACH = timedelta(days=10)
MISSING_SCHEMA = {"symbol": pl.Utf8, "as_of": UTC, "model_name": pl.Utf8, "reason": pl.Utf8}


def column(member: str, level: str) -> str:
    """The wide column holding ``member``'s ``level`` (``p10``, ``p50``, ``p90``)."""
    return f"{member}:{level}"


class Calendars:
    """One array of bar closes per calendar over a run's span: origins and horizons are slices of it."""

    def __init__(self, cadence: str, calendars: Iterable[str], start: datetime, end: datetime, horizon: int) -> None:
        self.cadence, self.horizon = cadence, horizon
        self._closes: dict[str, np.ndarray] = {}
        for calendar in sorted(set(calendars)):
            # Far enough past the last origin that its whole horizon is in the array.
            beyond = next_bar_closes(calendar, cadence, end, horizon)[-1]
            self._closes[calendar] = bar_close_array(calendar, cadence, start, beyond).astype(np.int64)

    def last_close(self, calendar: str, at_or_before: datetime) -> int | None:
        """The latest close at or before the instant, in epoch microseconds; None before the span."""
        closes = self._closes[calendar]
        i = int(np.searchsorted(closes, epoch_us(at_or_before), side="right"))
        return int(closes[i - 1]) if i else None

    def steps(self, calendar: str, as_of: np.ndarray) -> np.ndarray:
        """The next ``horizon`` closes after each origin, shape (n, horizon), epoch microseconds."""
        closes = self._closes[calendar]
        first = np.searchsorted(closes, as_of, side="right")
        return closes[first[:, None] + np.arange(self.horizon)[None, :]]


def window_origins(instruments: Sequence[Instrument], ends: Mapping[str, datetime], calendars: Calendars) -> pl.DataFrame:
    """Per window and instrument, the origin: the calendar's last close at or before the window's end.

    This is the ``as_of`` the chain gives a kept instrument (it allows no stale bar). Returns
    ``window``, ``symbol``, ``as_of``.
    """
    rows = [
        (window, i.symbol, as_of)
        for window, end in sorted(ends.items())
        for i in instruments
        if (as_of := calendars.last_close(i.calendar, end)) is not None
    ]
    frame = pl.DataFrame(rows, schema={"window": pl.Utf8, "symbol": pl.Utf8, "as_of": pl.Int64}, orient="row")
    return frame.with_columns(pl.col("as_of").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))


def horizon_frame(origins: pl.DataFrame, calendar_of: Mapping[str, str], calendars: Calendars) -> pl.DataFrame:
    """The horizon of each distinct origin (``symbol``, ``as_of``): ``symbol``, ``as_of``, ``step`` (1..H), ``ts``."""
    parts = []
    for (symbol,), frame in origins.select("symbol", "as_of").unique().partition_by("symbol", as_dict=True).items():
        as_of = frame["as_of"].sort().dt.epoch("us").to_numpy()
        steps = calendars.steps(calendar_of[symbol], as_of)
        parts.append(pl.DataFrame({
            "symbol": symbol,
            "as_of": np.repeat(as_of, calendars.horizon),
            "step": np.tile(np.arange(1, calendars.horizon + 1, dtype=np.int32), len(as_of)),
            "ts": steps.reshape(-1),
        }))
    if not parts:
        return pl.DataFrame(schema={"symbol": pl.Utf8, "as_of": UTC, "step": pl.Int32, "ts": UTC})
    return pl.concat(parts).with_columns(
        pl.col("as_of", "ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    ).sort("symbol", "as_of", "step")


@dataclass(frozen=True)
class MemberForecasts:
    """Every member's forecast at a set of origins, one row per origin step.

    Attributes
    ----------
    steps
        ``symbol``, ``as_of``, ``step``, ``ts`` and, per member, ``column(member, level)`` for
        the three levels (null where the member is missing at that origin; a point member's
        p10/p90 always null). Sorted by symbol, as_of, step.
    missing
        ``MISSING_SCHEMA``: one row per origin and member missing there, with the reason.
    kronos_written
        ``symbol``, ``as_of``, ``created_at`` of the Kronos row matched to each origin it forecasts.
    """

    steps: pl.DataFrame
    missing: pl.DataFrame
    kronos_written: pl.DataFrame

    @cached_property
    def _missing_at(self) -> dict[tuple[str, datetime], dict[str, str]]:
        out: dict[tuple[str, datetime], dict[str, str]] = {}
        for symbol, as_of, member, reason in self.missing.iter_rows():
            out.setdefault((symbol, as_of), {})[member] = reason
        return out

    def missing_at(self, symbol: str, as_of: datetime) -> dict[str, str]:
        """Member -> why it is missing, at one origin."""
        return self._missing_at.get((symbol, as_of), {})

    def present(self, symbol: str, as_of: datetime) -> tuple[str, ...]:
        """The members that forecast one origin, in ``MEMBERS`` order."""
        gone = self.missing_at(symbol, as_of)
        return tuple(m for m in MEMBERS if m not in gone)


def gather_members(
    conn: psycopg.Connection, timeframe: str, horizon: pl.DataFrame, bars: pl.DataFrame, vol_window: int
) -> MemberForecasts:
    """Every member's forecast of each origin in ``horizon`` (``horizon_frame``), from the database and the bars."""
    n_steps = horizon.group_by("symbol", "as_of").agg(pl.len(), pl.col("ts").min().alias("next_close"))
    origins = n_steps.select("symbol", "as_of")
    chronos = _stored_chronos(conn, timeframe, origins)
    kronos = matching_kronos_forecasts(conn, timeframe, n_steps.select("symbol", "as_of", "next_close"))
    kronos = kronos.unique(["symbol", "as_of", "ts"], keep="first")
    baseline = random_walk_baseline(bars, horizon, vol_window).filter(pl.col("model_name") == BASELINE_RW_VOL)
    sources = {
        MODEL_NAME: (chronos, "no chronos-2 row with this as_of"),
        KRONOS_MODEL_NAME: (kronos, f"no kronos-base row written within {TOLERANCE_TEXT[timeframe]} after as_of "
                                    "and before the next bar closed"),
        BASELINE_RW_VOL: (baseline, f"fewer than {MIN_HISTORY_CHANGES} one-bar changes before as_of"),
    }
    steps, missing = horizon, []
    for member, (forecast, absent) in sources.items():
        values = forecast.select(
            "symbol", "as_of", "ts", *(
                (pl.col(level) if level in forecast.columns else pl.lit(None, pl.Float64)).alias(column(member, level))
                for level in LEVELS
            )
        )
        steps = steps.join(values, on=["symbol", "as_of", "ts"], how="left")
        covered = steps.group_by("symbol", "as_of").agg(pl.col(column(member, "p50")).count().alias("_n"))
        gaps = covered.join(n_steps, on=["symbol", "as_of"]).filter(pl.col("_n") < pl.col("len"))
        missing.append(gaps.select(
            "symbol", "as_of", pl.lit(member).alias("model_name"),
            pl.when(pl.col("_n") == 0).then(pl.lit(absent))
            .otherwise(pl.format("its forecast covers {} of the {} steps of the horizon", "_n", "len")).alias("reason"),
        ))
        # A member that misses part of the horizon is missing from the whole origin.
        partial = gaps.select("symbol", "as_of", pl.lit(True).alias("_gap"))
        steps = steps.join(partial, on=["symbol", "as_of"], how="left").with_columns(
            pl.when(pl.col("_gap")).then(None).otherwise(pl.col(column(member, level))).alias(column(member, level))
            for level in LEVELS
        ).drop("_gap")
    written = kronos.select("symbol", "as_of", "created_at").unique(["symbol", "as_of"])
    return MemberForecasts(
        steps=steps.sort("symbol", "as_of", "step"),
        missing=pl.concat(missing).cast(MISSING_SCHEMA).sort("symbol", "as_of", "model_name"),  # type: ignore[arg-type]
        kronos_written=written.join(steps.select("symbol", "as_of").unique(), on=["symbol", "as_of"], how="semi"),
    )


def _stored_chronos(conn: psycopg.Connection, timeframe: str, origins: pl.DataFrame) -> pl.DataFrame:
    """Chronos-2's stored steps at exactly these origins (``symbol``, ``as_of``)."""
    if origins.is_empty():
        return pl.DataFrame(schema={"symbol": pl.Utf8, "as_of": UTC, "ts": UTC, "p10": pl.Float64,
                                    "p50": pl.Float64, "p90": pl.Float64})
    stored = read_predictions(
        conn, timeframe, MODEL_NAME, sorted(origins["symbol"].unique().to_list()),
        origins["as_of"].min(), origins["as_of"].max(),
    )
    return stored.join(origins, on=["symbol", "as_of"], how="semi").select("symbol", "as_of", "ts", *LEVELS)


@dataclass(frozen=True)
class KronosWindow:
    """Which instruments of a window Kronos has forecast from the window's origins (``storage.kronos_rows``)."""

    window: str
    written: tuple[str, ...]
    not_written: tuple[str, ...]
    newest_written_at: datetime | None

    @property
    def complete(self) -> bool:
        return not self.not_written


def kronos_windows(
    conn: psycopg.Connection, cadence: str, instruments: Sequence[Instrument], ends: Mapping[str, datetime]
) -> dict[str, KronosWindow]:
    """Per window (key -> end), the instruments whose Kronos forecast of the window's origin is stored."""
    if not ends:
        return {}
    # Ten days before the first end hold the last close of any calendar, long holidays included.
    span_start = min(ends.values()) - _LAST_CLOSE_REACH
    calendars = Calendars(cadence, [i.calendar for i in instruments], span_start, max(ends.values()), 1)
    origins = window_origins(instruments, ends, calendars)
    calendar_of = {i.symbol: i.calendar for i in instruments}
    next_close = [int(calendars.steps(calendar_of[s], np.array([epoch_us(a)]))[0, 0]) for s, a in
                  origins.select("symbol", "as_of").iter_rows()]
    origins = origins.with_columns(
        pl.Series("next_close", next_close, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    )
    matched = matching_kronos_forecasts(conn, cadence, origins).select("symbol", "as_of", "created_at").unique()
    found = origins.join(matched, on=["symbol", "as_of"], how="left")
    out = {}
    for window in sorted(ends):
        rows = found.filter(pl.col("window") == window)
        written = rows.filter(pl.col("created_at").is_not_null())
        out[window] = KronosWindow(
            window,
            tuple(sorted(written["symbol"].to_list())),
            tuple(sorted(set(calendar_of) - set(written["symbol"].to_list()))),
            written["created_at"].max() if written.height else None,
        )
    return out
