"""A run of the ensemble: every window's combined forecasts and the explanation of each, point-in-time.

For window ``W`` and an instrument, the forecast origin is the calendar's last close at or before
the window's end (the chain's ``as_of``). The forecast there reads only:

* bars closed at or before the window's end (the bar source is asked for nothing later);
* members' forecasts of that origin (``members``);
* members' past forecasts whose whole horizon was realised at or before ``as_of`` (``history``):
  the last ``lookback`` of them for the weights (``weights``), and older and newer ones, each
  re-combined as the ensemble would have combined it at its own ``as_of``, for the band's
  calibration (``calibration``). Each look back is bounded in bars as well as in occasions.

So a window gives the same ensemble whether it runs on schedule, in a backfill years later, or
after later bars and forecasts have been stored, and a re-run gives the same rows: nothing is
carried from one run to the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl
import psycopg

from forecasting_pipeline.ensemble.calibration import (
    BAND_SCHEMES,
    MAX_BAND_GAMMA,
    Calibration,
    Scores,
    band_scores,
    calibrate_adaptive,
    calibrate_recent,
    horizon_groups,
    not_calibrated,
)
from forecasting_pipeline.ensemble.combine import Band, combine
from forecasting_pipeline.ensemble.history import MemberHistory, SymbolOutcomes, scored_outcomes
from forecasting_pipeline.ensemble.members import (
    BANDED_MEMBERS,
    LEVELS,
    MEMBERS,
    MODEL_MEMBERS,
    Calendars,
    MemberForecasts,
    column,
    gather_members,
    horizon_frame,
    window_origins,
)
from forecasting_pipeline.ensemble.weights import GRID_STEP, SCHEMES, Blend, LossSums, blend, simplex_grid
from forecasting_pipeline.market.cadences import Cadence
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources.schema import BarSource
from forecasting_pipeline.scoring.baselines import DEFAULT_VOL_WINDOW, check_vol_window
from forecasting_pipeline.scoring.evaluation import bars_to_read
from forecasting_pipeline.scoring.frames import UTC
from forecasting_pipeline.storage.ensemble_weights import WeightsRow, write_ensemble
from forecasting_pipeline.storage.ml_predictions import ENSEMBLE_MODEL_NAME, prediction_rows
from forecasting_pipeline.times import epoch_us

METHOD_VERSION = 2
"""Bumped when the method changes, so that rows written by another method say so in ``model_version``."""

FORECAST_COLUMNS = ("symbol", "as_of", "step", "ts", "p10", "p50", "p90")
_FORECAST_SCHEMA = {"symbol": pl.Utf8, "as_of": UTC, "step": pl.Int32, "ts": UTC,
                    "p10": pl.Float64, "p50": pl.Float64, "p90": pl.Float64}


@dataclass(frozen=True)
class EnsembleParams:
    """How the ensemble weighs its members (docs/ensemble.md).

    Attributes
    ----------
    lookback
        Scored forecasts per instrument behind its weights and its band's calibration: the latest
        ones realised by the new forecast's ``as_of``.
    warmup
        Scored forecasts an instrument needs before its weights leave equal and its band is calibrated.
    shrinkage
        Pseudo-count pulling an instrument's own weights toward the pooled ones: own share ``n / (n + shrinkage)``.
    scheme
        ``grid`` (default), ``inverse`` or ``sqrt-inverse`` (``weights.SCHEMES``).
    vol_window
        One-bar changes behind the naive scale and the volatility band, as scoring uses.
    band
        The band's calibration (``calibration.BAND_SCHEMES``): ``adaptive`` (default) or ``recent``.
    band_window
        ``adaptive``: scored forecasts behind the band's starting factors, and as many again that
        then move them online (the newest).
    band_gamma
        ``adaptive``: how far one occasion moves a factor, on the log scale (0: never).
    band_groups
        ``adaptive``: horizon groups with factors of their own (``calibration.horizon_groups``).
    """

    lookback: int = 120
    warmup: int = 20
    shrinkage: float = 60.0
    scheme: str = "grid"
    vol_window: int = DEFAULT_VOL_WINDOW
    band: str = "adaptive"
    band_window: int = 30
    band_gamma: float = 1.0
    band_groups: int = 3

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.warmup < 1 or self.warmup > self.lookback:
            raise ValueError(f"need 1 <= warmup <= lookback, got warmup {self.warmup}, lookback {self.lookback}")
        if not self.shrinkage >= 0:
            raise ValueError(f"shrinkage must be a non-negative number, got {self.shrinkage}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown weighting scheme {self.scheme!r}: expected one of {SCHEMES}")
        if self.band not in BAND_SCHEMES:
            raise ValueError(f"unknown band calibration {self.band!r}: expected one of {BAND_SCHEMES}")
        if self.band_window < self.warmup:
            raise ValueError(f"need band_window >= warmup, got band_window {self.band_window}, warmup {self.warmup}")
        if not 0 <= self.band_gamma <= MAX_BAND_GAMMA or self.band_groups < 1:
            raise ValueError(f"need 0 <= band_gamma <= {MAX_BAND_GAMMA:g} and band_groups >= 1, got {self.band_gamma} and {self.band_groups}")
        check_vol_window(self.vol_window)

    def weights_reach(self, horizon: int) -> int:
        """Bars before an origin that the weights may look back: ``lookback`` occasions, each ``horizon`` bars long."""
        return self.lookback + horizon

    def band_reach(self, horizon: int) -> int:
        """Bars before an origin that the band's calibration occasions may reach back."""
        return 2 * self.band_window + horizon if self.band == "adaptive" else self.weights_reach(horizon)

    def reach(self, horizon: int) -> int:
        """Bars of past origins a forecast reads: its band's occasions and, before them, their own weights'."""
        if self.band == "recent":
            return self.weights_reach(horizon) + 1
        return self.band_reach(horizon) + self.weights_reach(horizon) + 1

    def model_version(self) -> str:
        """The ``model_version`` of the rows: the members and how they are weighted and calibrated."""
        scheme = f"{self.scheme}({GRID_STEP:g})" if self.scheme == "grid" else self.scheme
        band = (f"band=adaptive conformal p10-p90 window={self.band_window} gamma={self.band_gamma:g} "
                f"groups={self.band_groups}" if self.band == "adaptive" else "band=recent conformal p10-p90")
        return (
            f"ensemble-v{METHOD_VERSION} members={'+'.join(MEMBERS)} weights={scheme} on scaled MAE/pinball, "
            f"lookback={self.lookback} warmup={self.warmup} shrinkage={self.shrinkage:g}, {band}"
        )


@dataclass(frozen=True)
class Explanation:
    """Why one ensemble forecast is what it is: its weights, the members left out, the numbers behind them."""

    symbol: str
    as_of: datetime
    weights: dict[str, dict[str, float | None]]
    missing: dict[str, str]
    details: dict[str, object]


@dataclass
class EnsembleRun:
    """A run's ensemble forecasts per window, and what explains them.

    Attributes
    ----------
    forecasts
        Window -> long rows ``FORECAST_COLUMNS`` (windows sharing an ``as_of`` share rows).
    explanations
        (symbol, as_of) -> ``Explanation``, one per forecast.
    left_out
        Window -> symbol -> why that instrument has no ensemble forecast in that window.
    """

    timeframe: str
    model_version: str
    forecasts: dict[str, pl.DataFrame] = field(default_factory=dict)
    explanations: dict[tuple[str, datetime], Explanation] = field(default_factory=dict)
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)

    def explanations_of(self, window: str) -> list[Explanation]:
        frame = self.forecasts.get(window)
        keys = [] if frame is None else frame.select("symbol", "as_of").unique().sort("symbol").iter_rows()
        return [self.explanations[key] for key in keys]

    def missing_members(self, window: str) -> dict[str, dict[str, str]]:
        """Symbol -> member -> reason, for this window's forecasts made without some member."""
        return {e.symbol: e.missing for e in self.explanations_of(window) if e.missing}


def ensemble_windows(
    conn: psycopg.Connection,
    cadence: Cadence,
    bar_source: BarSource,
    instruments: Sequence[Instrument],
    ends: Mapping[str, datetime],
    params: EnsembleParams = EnsembleParams(),
) -> EnsembleRun:
    """The ensemble forecasts of every window in ``ends`` (window key -> end), from members stored in ``conn``."""
    run = EnsembleRun(cadence.name, params.model_version())
    if not ends:
        return run
    first, last = min(ends.values()), max(ends.values())
    reach = params.reach(cadence.horizon)
    # Calendars differ in bars per day: a margin keeps every instrument's floors inside what was read.
    n_bars = bars_to_read(first, last, cadence.bar, params.vol_window) + reach + reach // 4 + cadence.horizon
    bars, unreadable = bar_source.bars(list(instruments), cadence.name, last, n_bars)
    bars = bars.select("symbol", pl.col("ts").cast(UTC), "close").sort("symbol", "ts")
    readable = [i for i in instruments if i.symbol not in unreadable and i.symbol in set(bars["symbol"])]
    for window in ends:
        run.left_out[window] = {s: f"bars unreadable: {why}" for s, why in unreadable.items()}
        run.left_out[window] |= {i.symbol: "no bar at or before the window's end" for i in instruments
                                 if i.symbol not in unreadable and i not in readable}
    if not readable:
        return run
    calendars = Calendars(cadence.name, [i.calendar for i in readable], bars["ts"].min() - cadence.bar, last,
                          cadence.horizon)
    origins = window_origins(readable, ends, calendars)
    with_origin = set(origins.select("window", "symbol").iter_rows())
    for window in ends:
        run.left_out[window] |= {i.symbol: "its calendar has no close between its first bar and the window's end"
                                 for i in readable if (window, i.symbol) not in with_origin}
    past = _past_origins(bars, origins, reach + reach // 4)
    horizon = horizon_frame(pl.concat([origins.select("symbol", "as_of"), past]), {i.symbol: i.calendar for i in readable},
                            calendars)
    # Its own transaction: on a fresh connection the reads end here, and write_run's commit is a commit.
    with conn.transaction():
        members = gather_members(conn, cadence.name, horizon, bars, params.vol_window)
    _Combiner(run, params, members, scored_outcomes(members, bars, params.vol_window), bars).make(origins)
    return run


def _past_origins(bars: pl.DataFrame, origins: pl.DataFrame, reach: int) -> pl.DataFrame:
    """Bar closes from ``reach`` bars before each instrument's first origin on: the origins of its scored history."""
    first = origins.group_by("symbol").agg(pl.col("as_of").min().alias("_first"))
    ranked = bars.join(first, on="symbol").with_columns(
        (pl.col("ts") <= pl.col("_first")).cum_sum().over("symbol").alias("_upto"),
        (pl.col("ts") <= pl.col("_first")).sum().over("symbol").alias("_before"),
    )
    return ranked.filter(pl.col("_before") - pl.col("_upto") < reach).select("symbol", pl.col("ts").alias("as_of"))


class _Combiner:
    """Makes each window's forecasts from the members and their scored history."""

    def __init__(self, run: EnsembleRun, params: EnsembleParams, members: MemberForecasts,
                 outcomes: dict[str, SymbolOutcomes], bars: pl.DataFrame) -> None:
        self.run, self.params, self.members, self.outcomes = run, params, members, outcomes
        self.bar_times = {(s, t) for s, t in bars.select("symbol", "ts").iter_rows()}
        self.bar_ts = {s: f["ts"].dt.epoch("us").to_numpy() for (s,), f in bars.partition_by("symbol", as_dict=True).items()}
        self.steps = members.steps.partition_by("symbol", "as_of", as_dict=True)
        self.made: dict[tuple[str, datetime], pl.DataFrame | str] = {}
        self.pooled: dict[tuple[tuple[str, ...], int], tuple[LossSums, LossSums]] = {}
        self.scores: dict[tuple[str, tuple[str, ...]], Scores] = {}
        self.horizon = int(members.steps["step"].max())
        self.groups = horizon_groups(self.horizon, params.band_groups)

    def make(self, origins: pl.DataFrame) -> None:
        for (window,), rows in origins.partition_by("window", as_dict=True, maintain_order=True).items():
            parts = []
            for _, symbol, as_of in rows.iter_rows():
                key = (symbol, as_of)
                if key not in self.made:
                    self.made[key] = self._forecast(symbol, as_of)
                made = self.made[key]
                if isinstance(made, str):
                    self.run.left_out[window][symbol] = made
                else:
                    parts.append(made)
            if parts:
                self.run.forecasts[window] = pl.concat(parts).cast(_FORECAST_SCHEMA)  # type: ignore[arg-type]

    def _forecast(self, symbol: str, as_of: datetime) -> pl.DataFrame | str:
        """One origin's ensemble rows, or why there are none."""
        if (symbol, as_of) not in self.bar_times:
            return f"no bar closed at its as_of {as_of.isoformat()} (the chain leaves such an instrument out too)"
        missing = self.members.missing_at(symbol, as_of)
        present = self.members.present(symbol, as_of)
        if not any(m in present for m in MODEL_MEMBERS) or not any(m in present for m in BANDED_MEMBERS):
            needs = "a stored forecast (chronos-2 or kronos-base)" if not any(m in present for m in MODEL_MEMBERS) \
                else "a member with a band"
            return f"no ensemble without {needs}: " + "; ".join(f"{m}: {why}" for m, why in missing.items())
        history = self._history(symbol, present)
        cutoff = epoch_us(as_of)
        span, location, band = self._weights(symbol, history, cutoff)
        steps = self.steps[(symbol, as_of)].sort("step")
        current = combine(
            np.column_stack([steps[column(m, "p50")].to_numpy() for m in present]), location.weights,
            np.stack([steps.select(column(m, lv) for lv in LEVELS).to_numpy() for m in history.banded], axis=1),
            band.weights,
        )
        calibration = self._calibration(symbol, history, cutoff, span, location, band)
        final = calibration.apply(current)
        if not (np.isfinite([final.p10, final.p50, final.p90]).all() and (final.lower >= 0).all()
                and (final.upper >= 0).all()):
            return "the combination is not finite and ordered (a member's forecast is out of range)"
        self.run.explanations[(symbol, as_of)] = _explain(
            symbol, as_of, history, span, location, band, calibration, missing, self.members
        )
        return steps.select("symbol", "as_of", "step", "ts").with_columns(
            pl.Series("p10", final.p10), pl.Series("p50", final.p50), pl.Series("p90", final.p90)
        )

    def _weights(self, symbol: str, history: MemberHistory, cutoff: int) -> tuple[slice, Blend, Blend]:
        """The span behind the weights of a forecast made at ``cutoff``, and its location and band weights."""
        p = self.params
        span = history.span(cutoff, p.lookback, self._floor(symbol, cutoff, p.weights_reach(self.horizon)))
        own_location, own_band = history.sums(span)
        pooled_location, pooled_band = self._pooled(history.members, cutoff)
        location = blend(own_location, pooled_location, simplex_grid(len(history.members)), p.scheme, p.warmup,
                         p.shrinkage)
        band = blend(own_band, pooled_band, simplex_grid(len(history.banded)), p.scheme, p.warmup, p.shrinkage)
        return span, location, band

    def _calibration(self, symbol: str, history: MemberHistory, cutoff: int, span: slice, location: Blend,
                     band: Blend) -> Calibration:
        p = self.params
        if location.warm_up:
            return not_calibrated(self.horizon, self.groups)
        if p.band == "recent":
            past = combine(history.p50[span], location.weights, history.bands[span], band.weights)
            return calibrate_recent(past, history.actual[span], history.scale[span], self.groups)
        scores = self._scores(symbol, history)
        span = history.span(cutoff, 2 * p.band_window, self._floor(symbol, cutoff, p.band_reach(self.horizon)))
        occasions = np.arange(span.start, span.stop)[scores.usable[span]]
        if len(occasions) < p.warmup:
            return not_calibrated(self.horizon, self.groups)
        base = max(p.warmup, len(occasions) - p.band_window)
        return calibrate_adaptive(scores, history.realised_at, history.as_of, occasions, base, self.groups, p.band_gamma)

    def _scores(self, symbol: str, history: MemberHistory) -> Scores:
        """Each occasion's scores against the band the ensemble would have made at its own ``as_of`` (cached)."""
        key = (symbol, history.members)
        if key not in self.scores:
            blends = [self._weights(symbol, history, int(cutoff))[1:] for cutoff in history.as_of]
            # One occasion at a time, as the forecast itself is combined: reductions over arrays of
            # another length may round differently, and a window must give the same band in any run.
            bands = [combine(history.p50[j], location.weights, history.bands[j], band.weights)
                     for j, (location, band) in enumerate(blends)]
            past = Band(*(np.array([getattr(b, level) for b in bands]).reshape(-1, self.horizon) for level in LEVELS))
            usable = np.array([not location.warm_up for location, _ in blends], dtype=bool)
            self.scores[key] = band_scores(past, history.actual, history.scale, usable)
        return self.scores[key]

    def _floor(self, symbol: str, cutoff: int, bars: int) -> int:
        """The close ``bars`` bars before the instrument's last bar at or before ``cutoff``: a look back's bound."""
        ts = self.bar_ts.get(symbol)
        if ts is None:
            return _NO_FLOOR
        i = int(np.searchsorted(ts, cutoff, side="right")) - 1 - bars
        # An instrument with less history than that has no older bars in any run: nothing to bound.
        return int(ts[i]) if i >= 0 else _NO_FLOOR

    def _history(self, symbol: str, members: tuple[str, ...]) -> MemberHistory:
        outcomes = self.outcomes.get(symbol)
        if outcomes is None:
            outcomes = self.outcomes[symbol] = _no_outcomes(self.horizon)
        return outcomes.history(members)

    def _pooled(self, members: tuple[str, ...], cutoff: int) -> tuple[LossSums, LossSums]:
        """Losses summed over every instrument's scored occasions realised by ``cutoff``, for this member set."""
        key = (members, cutoff)
        if key not in self.pooled:
            reach = self.params.weights_reach(self.horizon)
            sums = [o.history(members) for o in self.outcomes.values()]
            sums = [h.sums(h.span(cutoff, self.params.lookback, self._floor(s, cutoff, reach)))
                    for s, h in zip(self.outcomes, sums)]
            banded = sum(1 for m in members if m in BANDED_MEMBERS)
            zero = (LossSums(np.zeros(len(simplex_grid(len(members)))), 0),
                    LossSums(np.zeros(len(simplex_grid(banded))), 0))
            self.pooled[key] = (
                sum((s[0] for s in sums), start=zero[0]), sum((s[1] for s in sums), start=zero[1])
            )
        return self.pooled[key]


_NO_FLOOR = np.iinfo(np.int64).min


def _no_outcomes(horizon: int) -> SymbolOutcomes:
    empty = np.empty((0, horizon))
    return SymbolOutcomes(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), empty, np.empty(0),
                          {column(m, lv): empty for m in MEMBERS for lv in LEVELS}, np.empty(0, dtype=np.int64))


def _rounded(values: np.ndarray | None, names: Sequence[str]) -> dict[str, float] | None:
    return None if values is None else {m: round(float(w), 6) for m, w in zip(names, values)}


def _explain(symbol: str, as_of: datetime, history: MemberHistory, span: slice, location: Blend, band: Blend,
             calibration: Calibration, missing: dict[str, str], members: MemberForecasts) -> Explanation:
    present, banded = history.members, history.banded
    own_location, own_band = history.sums(span)
    location_loss = own_location.member_losses(len(present))
    band_loss = dict(zip(banded, own_band.member_losses(len(banded))))
    written = members.kronos_written.filter((pl.col("symbol") == symbol) & (pl.col("as_of") == as_of))["created_at"]
    return Explanation(
        symbol, as_of,
        weights={m: {"location": round(float(w), 6),
                     "band": round(float(band.weights[banded.index(m)]), 6) if m in banded else None}
                 for m, w in zip(present, location.weights)},
        missing=dict(missing),
        details={
            "scored_forecasts": own_location.n,
            "warm_up": location.warm_up,
            "own_share": round(location.shrink, 6),
            "location": {"own": _rounded(location.own, present), "pooled": _rounded(location.pooled, present)},
            "band": {"own": _rounded(band.own, banded), "pooled": _rounded(band.pooled, banded)},
            "member_losses": {
                m: {"scaled_mae": None if np.isnan(loss) else round(float(loss), 6),
                    "scaled_pinball": None if m not in band_loss or np.isnan(band_loss[m])
                    else round(float(band_loss[m]), 6)}
                for m, loss in zip(present, location_loss)
            },
            "calibration": calibration.describe(),
            "kronos_written_at": written[0].isoformat() if len(written) else None,
        },
    )


def write_run(conn: psycopg.Connection, run: EnsembleRun) -> dict[str, int]:
    """Store the run's forecasts as ``ensemble`` rows of ``ml_predictions`` with their weights, in one transaction.

    Each window with forecasts then holds exactly this run's set: an ensemble row an earlier run
    of the window made for an instrument this run left out is deleted, with its weights. A window
    without any forecast in this run is left as it was. Returns the rows written per window.
    """
    rows_of = {
        window: prediction_rows(frame, run.timeframe, run.model_version, ENSEMBLE_MODEL_NAME)
        for window, frame in sorted(run.forecasts.items())
    }
    explanations = [WeightsRow(e.symbol, e.as_of, e.weights, e.missing, e.details) for e in run.explanations.values()]
    return write_ensemble(conn, run.timeframe, run.model_version, rows_of, explanations)
