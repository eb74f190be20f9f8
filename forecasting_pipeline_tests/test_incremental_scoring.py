"""Incremental scoring on real PostgreSQL: runs that add forecasts as they realise equal a recomputation from scratch.

Bars are daily files of three instruments (the ``files`` source), one bar a day; a run's ``until``
decides which of them have closed, so moving it forward is windows realising over time. Both
models store forecasts as they do in production: Chronos-2 through the pipeline's upsert, Kronos
as raw rows with ``as_of`` NULL and steps ``{"ts", "close"}``.
"""

import json
import logging
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources import FileSource
from forecasting_pipeline.scoring import evaluation
from forecasting_pipeline.scoring.evaluation import (
    ScoringWindowError,
    losses_realised_by,
    review_scores,
    score_new_forecasts,
)
from forecasting_pipeline.scoring.forecasts import MALFORMED, MISSING_BAR, SUPERSEDED, place_as_of
from forecasting_pipeline.scoring.losses import per_forecast_losses
from forecasting_pipeline.storage.forecast_scores import read_losses, read_scores
from forecasting_pipeline.storage.ml_predictions import prediction_rows, read_predictions, upsert_window

SYMBOLS = ["AAPL", "BTC-USD", "EURUSD"]
INSTRUMENTS = select_instruments(load_instruments(), SYMBOLS)
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
N_BARS = 110
STEPS = 3
FLOATS = ("pinball_p10", "pinball_p50", "pinball_p90", "mean_pinball", "coverage_p10_p90", "below_p10_rate",
          "above_p90_rate", "scaled_mae", "scaled_rw_mae", "relative_mae", "sum_pinball_p10", "sum_pinball_p50",
          "sum_pinball_p90", "sum_mean_pinball", "sum_scaled_abs_error", "sum_scaled_rw_abs_error",
          "scaled_abs_error", "scaled_rw_abs_error")


def day(i: int) -> datetime:
    return START + timedelta(days=i)


def closes(symbol: str) -> np.ndarray:
    rng = np.random.default_rng(SYMBOLS.index(symbol))
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, N_BARS)))


def write_bars(root, symbol: str, missing: tuple[int, ...] = ()) -> None:
    keep = [i for i in range(N_BARS) if i not in missing]
    close = closes(symbol)[keep]
    folder = root / "1d"
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "ts": [day(i) for i in keep], "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": [1.0] * len(keep),
    }).write_parquet(folder / f"{symbol}.parquet")


def store_chronos(conn, symbol: str, as_of: int, shift: float = 0.0) -> None:
    """A Chronos-2 forecast from bar ``as_of``: p50 the realised close (plus ``shift`` times the level), a 2% band."""
    actual = closes(symbol)[as_of + 1: as_of + 1 + STEPS]
    p50 = actual + shift * closes(symbol)[as_of]
    frame = pl.DataFrame({
        "symbol": [symbol] * STEPS, "as_of": [day(as_of)] * STEPS, "step": list(range(1, STEPS + 1)),
        "ts": [day(as_of + s) for s in range(1, STEPS + 1)], "p10": p50 * 0.99, "p50": p50, "p90": p50 * 1.01,
    })
    upsert_window(conn, prediction_rows(frame, "1d", "test"))


def store_kronos(conn, symbol: str, as_of: int, shift: float = 0.0, written: datetime | None = None) -> None:
    """A Kronos row as Kronos writes it: as_of NULL, steps {"ts", "close"}, close = last close * (1 + shift)."""
    level = closes(symbol)[as_of] * (1.0 + shift)
    steps = [{"ts": day(as_of + s).isoformat(), "close": level} for s in range(1, STEPS + 1)]
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, predictions, created_at) VALUES (%s, '1d', %s::jsonb, %s)",
        (symbol, json.dumps(steps), written or day(as_of) + timedelta(hours=1)),
    )


def store_history(conn, kronos_symbols: tuple[str, ...] = tuple(SYMBOLS)) -> None:
    """60 forecast dates per model and symbol: Chronos-2 beats Kronos until bar 60, then Kronos beats Chronos-2."""
    for symbol in SYMBOLS:
        for as_of in range(30, 90):
            store_chronos(conn, symbol, as_of, shift=0.0 if as_of < 60 else 0.03)
            if symbol in kronos_symbols:
                store_kronos(conn, symbol, as_of, shift=0.02 if as_of < 60 else 0.0)


def scored_as_of(conn, symbol: str, model: str) -> list[datetime]:
    rows = conn.execute("SELECT as_of FROM forecast_losses WHERE symbol = %s AND model_name = %s ORDER BY as_of",
                        (symbol, model)).fetchall()
    return [r[0] for r in rows]


def run(conn, bar_root, until: int, rebuild: bool = False, source=None):
    return score_new_forecasts(conn, DAILY, source or FileSource(bar_root), INSTRUMENTS, day(until), rebuild=rebuild)


def snapshot(conn) -> dict[str, pl.DataFrame]:
    skips = conn.execute(
        "SELECT prediction_id, model_name, symbol, as_of, reason FROM forecast_scoring_skips ORDER BY prediction_id"
    ).fetchall()
    return {
        "scores": read_scores(conn, "1d", with_sums=True).drop("scored_through"),
        "losses": read_losses(conn, "1d"),
        "skips": pl.DataFrame(skips, schema=["prediction_id", "model_name", "symbol", "as_of", "reason"], orient="row"),
    }


def assert_same(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    """Same rows; floats equal up to the order in which their sums were added."""
    for table in left:
        a, b = left[table], right[table]
        assert a.columns == b.columns and a.height == b.height, table
        floats = [c for c in a.columns if c in FLOATS]
        assert a.drop(floats).equals(b.drop(floats)), table
        for column in floats:
            np.testing.assert_allclose(a[column].fill_null(-1.0).to_numpy(), b[column].fill_null(-1.0).to_numpy(),
                                       rtol=1e-12, atol=1e-15, err_msg=f"{table}.{column}")


def verdicts(conn) -> tuple:
    review = review_scores(conn, "1d", span=None)
    canary = review.loss_canary
    return (canary.model_a, canary.model_b, canary.loss_column, canary.flips, canary.recent, review.coverage_alarms)


@pytest.fixture
def bar_root(tmp_path):
    for symbol in SYMBOLS:
        write_bars(tmp_path, symbol)
    return tmp_path


def test_when_windows_realise_over_several_runs_then_the_scores_equal_a_recomputation_from_scratch(conn, bar_root):
    store_history(conn)
    first = run(conn, bar_root, until=50)
    # Rows written late for old windows, as a backfill writes them: scored by the next run all the same.
    for symbol in SYMBOLS:
        store_chronos(conn, symbol, 25)
    for until in (70, 80, 95):
        run(conn, bar_root, until=until)
    incremental, incremental_verdicts = snapshot(conn), verdicts(conn)

    rebuilt = run(conn, bar_root, until=95, rebuild=True)

    assert first.rebuild_reason == "no scores kept yet" and rebuilt.rebuild_reason == "asked for"
    assert_same(incremental, snapshot(conn))
    assert incremental_verdicts == verdicts(conn)
    # Everything realised by bar 95 is in: 61 Chronos-2 and 60 Kronos forecasts per symbol.
    assert dict(incremental["losses"].group_by("model_name").len().iter_rows()) == {
        "baseline-random-walk": 183, "baseline-rw-vol": 183, "chronos-2": 183, "kronos-base": 180}
    canary = review_scores(conn, "1d", span=None).loss_canary
    assert (canary.model_a, canary.model_b, canary.loss_column) == ("chronos-2", "kronos-base", "scaled_abs_error")
    assert [(f.from_sign, f.to_sign) for f in canary.flips] == [(-1, 1)]


def test_when_the_same_run_is_repeated_then_nothing_is_added_twice(conn, bar_root):
    store_history(conn)
    run(conn, bar_root, until=70)
    once = snapshot(conn)

    again = run(conn, bar_root, until=70)

    assert again.scored == {} and again.rebuild_reason is None and again.rebuilt_symbols == []
    assert_same(once, snapshot(conn))


class FailingSource(FileSource):
    """The files source until its ``fail_at``-th read, which raises: a run that dies half way."""

    def __init__(self, root, fail_at: int) -> None:
        super().__init__(root)
        self.calls, self.fail_at = 0, fail_at

    def bars(self, instruments, cadence, end, n_bars):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("market data went away")
        return super().bars(instruments, cadence, end, n_bars)


def test_when_a_run_dies_half_way_then_nothing_of_it_is_kept_and_a_rerun_scores_everything_once(
    conn, bar_root, monkeypatch
):
    store_history(conn)
    run(conn, bar_root, until=60)
    before = snapshot(conn)
    monkeypatch.setattr(evaluation, "CHUNK_ROWS", 1)  # one instrument per read, so the second read is mid-run

    with pytest.raises(ConnectionError):
        run(conn, bar_root, until=80, source=FailingSource(bar_root, fail_at=2))

    assert_same(before, snapshot(conn))
    run(conn, bar_root, until=80)
    after = snapshot(conn)
    run(conn, bar_root, until=80, rebuild=True)
    assert_same(after, snapshot(conn))


def test_when_a_bar_arrives_late_then_the_forecasts_waiting_for_it_are_scored_by_the_next_run(conn, bar_root):
    store_history(conn, kronos_symbols=("AAPL", "EURUSD"))
    write_bars(bar_root, "BTC-USD", missing=(52,))
    early = run(conn, bar_root, until=55)
    # The forecasts from bars 49, 50 and 51 have a step at the missing bar 52: they wait.
    scored = set(scored_as_of(conn, "BTC-USD", "chronos-2"))
    assert {day(48), day(52)} <= scored and not {day(49), day(50), day(51)} & scored
    # Waiting: those three, and the forecasts from bars 53 to 89 of every symbol and model.
    assert early.pending == {"chronos-2": 3 + 3 * 37, "kronos-base": 2 * 37}

    write_bars(bar_root, "BTC-USD")
    late = run(conn, bar_root, until=56)
    waited = pl.col("as_of").is_in([day(49), day(50), day(51)]) & (pl.col("symbol") == "BTC-USD")
    incremental = snapshot(conn)["losses"].filter(waited)

    assert late.scored["chronos-2"] == 3 + 3  # the three that waited, and each symbol's forecast from bar 53
    assert incremental["model_name"].to_list() == ["baseline-random-walk"] * 3 + ["baseline-rw-vol"] * 3 + [
        "chronos-2"] * 3
    # Scored as a recomputation scores them. (Those scored before the bar came, from bar 52 on, keep
    # the scale they were given without it, until a rebuild.)
    run(conn, bar_root, until=56, rebuild=True)
    assert_same({"losses": incremental}, {"losses": snapshot(conn)["losses"].filter(waited)})


def test_when_a_bar_is_still_missing_after_the_grace_period_then_its_forecasts_are_skipped_until_a_rebuild(
    conn, bar_root
):
    store_history(conn, kronos_symbols=("AAPL", "EURUSD"))
    write_bars(bar_root, "BTC-USD", missing=(52,))
    result = run(conn, bar_root, until=75)
    assert result.skipped[MISSING_BAR] == {"chronos-2": 3}

    write_bars(bar_root, "BTC-USD")
    assert run(conn, bar_root, until=76).scored["chronos-2"] == 3  # each symbol's forecast from bar 73 only

    rebuilt = run(conn, bar_root, until=76, rebuild=True)
    assert MISSING_BAR not in rebuilt.skipped
    assert {day(49), day(50), day(51)} <= set(scored_as_of(conn, "BTC-USD", "chronos-2"))


def test_when_the_bar_before_a_scored_kronos_forecast_arrives_late_then_its_placement_changes_only_on_a_rebuild(
    conn, bar_root
):
    store_kronos(conn, "BTC-USD", 52)  # first step at bar 53
    write_bars(bar_root, "BTC-USD", missing=(52,))
    run(conn, bar_root, until=60)
    assert scored_as_of(conn, "BTC-USD", "kronos-base") == [day(51)]  # the last bar before its first step, then

    write_bars(bar_root, "BTC-USD")
    run(conn, bar_root, until=61)
    assert scored_as_of(conn, "BTC-USD", "kronos-base") == [day(51)]

    run(conn, bar_root, until=61, rebuild=True)
    assert scored_as_of(conn, "BTC-USD", "kronos-base") == [day(52)]


def test_when_kronos_rewrites_a_scored_forecast_then_the_newest_row_counts_and_the_symbol_is_rescored(
    conn, bar_root
):
    store_history(conn)
    run(conn, bar_root, until=70)
    # A second Kronos row for the forecast from bar 40, written later, with other closes.
    store_kronos(conn, "AAPL", 40, shift=0.05, written=day(69))

    result = run(conn, bar_root, until=71)

    assert result.rebuilt_symbols == ["AAPL"]
    incremental = snapshot(conn)
    kronos_40 = incremental["losses"].filter(
        (pl.col("symbol") == "AAPL") & (pl.col("model_name") == "kronos-base") & (pl.col("as_of") == day(40))
    )
    # |close(41..43) - 1.05 close(40)| / scale: the new row's, not the old (1.02 close(40)) one's.
    assert kronos_40["prediction_created_at"].to_list() == [day(69)]
    assert incremental["skips"].filter(pl.col("reason") == SUPERSEDED)["as_of"].to_list() == [day(40)]
    run(conn, bar_root, until=71, rebuild=True)
    assert_same(incremental, snapshot(conn))


def test_when_a_chronos_window_is_rerun_after_it_was_scored_then_its_new_forecast_replaces_the_old(conn, bar_root):
    store_history(conn)
    run(conn, bar_root, until=70)
    before = snapshot(conn)["losses"]
    store_chronos(conn, "EURUSD", 45, shift=0.04)

    result = run(conn, bar_root, until=70)

    assert result.rebuilt_symbols == ["EURUSD"]
    after = snapshot(conn)
    key = (pl.col("symbol") == "EURUSD") & (pl.col("model_name") == "chronos-2") & (pl.col("as_of") == day(45))
    assert after["losses"].filter(key)["scaled_abs_error"].item() > before.filter(key)["scaled_abs_error"].item()
    run(conn, bar_root, until=70, rebuild=True)
    assert_same(after, snapshot(conn))


def test_when_other_writers_store_malformed_rows_then_scoring_records_them_once_and_scores_the_rest(
    conn, bar_root, caplog
):
    store_history(conn)
    for predictions in ({"error": "CUDA out of memory"}, None, [{"ts": "yesterday", "close": 1.0}],
                        [{"ts": day(41).isoformat(), "close": "abc"}],
                        [{"ts": day(41).isoformat(), "p10": 1.0, "close": 2.0}]):
        conn.execute("INSERT INTO ml_predictions (symbol, timeframe, predictions) VALUES ('AAPL', '1d', %s::jsonb)",
                     (json.dumps(predictions),))

    with caplog.at_level(logging.WARNING):
        first = run(conn, bar_root, until=70)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        second = run(conn, bar_root, until=71)

    assert first.skipped[MALFORMED] == {"kronos-base": 5}
    assert first.scored["chronos-2"] == 3 * (70 - 30 - STEPS + 1)
    assert not [m for m in caplog.messages if "malformed" in m]
    assert MALFORMED not in second.skipped


def test_when_losses_are_read_as_of_an_instant_then_they_equal_losses_computed_from_forecasts_and_bars(
    conn, bar_root
):
    store_history(conn)
    run(conn, bar_root, until=80)
    instant = day(65)

    stored = losses_realised_by(conn, "1d", "kronos-base", instant)

    bars = FileSource(bar_root).bars(INSTRUMENTS, "1d", instant, N_BARS)[0]
    # Each Kronos row of a symbol has its own created_at, which tells the rows apart here.
    kronos = read_predictions(conn, "1d", model_name="kronos-base").rename(
        {"created_at": "prediction_created_at"}).with_columns(pl.lit(0).alias("prediction_id"))
    placed, _waiting, _lost = place_as_of(kronos, bars)
    direct = per_forecast_losses(placed, bars, include_baselines=False)
    assert stored["realised_at"].max() <= instant
    assert stored.height == direct.height == 3 * (65 - 30 - STEPS + 1)
    assert stored.drop("mean_pinball", "scaled_abs_error", "scaled_rw_abs_error").equals(
        direct.drop("mean_pinball", "scaled_abs_error", "scaled_rw_abs_error"))
    np.testing.assert_allclose(stored["scaled_abs_error"].to_numpy(), direct["scaled_abs_error"].to_numpy(), rtol=1e-12)


def test_when_until_is_before_what_is_scored_then_the_run_is_refused_unless_it_rebuilds(conn, bar_root):
    store_history(conn)
    run(conn, bar_root, until=80)

    with pytest.raises(ScoringWindowError, match="rebuild"):
        run(conn, bar_root, until=60)
    assert run(conn, bar_root, until=60, rebuild=True).rebuild_reason == "asked for"
