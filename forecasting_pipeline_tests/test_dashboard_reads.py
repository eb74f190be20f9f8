"""What the dashboard's reads compute, on real PostgreSQL without the service: the model catalog and its first
view, a model's past forecasts against the sample source's bars, rolling scaled error, and the weights' history."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from forecasting_pipeline.market.cadences import DAILY
from forecasting_pipeline.market.calendars import next_bar_closes
from forecasting_pipeline.market.instruments import load_instruments, select_instruments
from forecasting_pipeline.market.sources import FileSource, SampleSource
from forecasting_pipeline.scoring.frames import PER_FORECAST_SCHEMA
from forecasting_pipeline.scoring.rolling import rolling_scaled_mae
from forecasting_pipeline.serving.model_catalog import Series, View, describe_model, model_catalog
from forecasting_pipeline.serving.track_record import past_forecasts
from forecasting_pipeline.serving.weights_history import weights_history
from forecasting_pipeline.storage.ensemble_weights import WeightsRow, write_ensemble

T0 = datetime(2026, 3, 2, 21, 0, tzinfo=timezone.utc)
UNIVERSE = ["BTC-USD", "ETH-USD", "AAPL", "MSFT"]


def _insert(conn, model, timeframe, symbol, as_of, created_at=None, steps=None):
    conn.execute(
        "INSERT INTO ml_predictions (symbol, timeframe, model_name, as_of, created_at, predictions) "
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
        (symbol, timeframe, model, as_of, created_at or (as_of or T0) + timedelta(minutes=5), json.dumps(steps or [])),
    )


def test_when_ml_predictions_is_empty_then_there_is_no_first_view_and_the_reason_says_so(conn):
    catalog = model_catalog(conn, UNIVERSE, "kronos-base")

    assert (catalog.models, catalog.first_view) == ([], None)
    assert catalog.empty_reason.startswith("No forecasts yet: ml_predictions has no rows.")


def test_when_rows_exist_only_outside_the_universe_then_the_reason_names_their_models_and_symbols(conn):
    _insert(conn, "kronos-base", "1d", "SYM0", None, T0)
    _insert(conn, "chronos-2", "1h", "SYM1", T0)

    catalog = model_catalog(conn, UNIVERSE, "kronos-base")

    assert catalog.first_view is None
    assert catalog.empty_reason == (
        "No forecasts for these instruments: ml_predictions holds rows of kronos-base, chronos-2 only for SYM0, SYM1, "
        "none of which is among the 4 instruments this service knows (INSTRUMENTS_FILE).")


def test_when_the_default_model_has_rows_only_hourly_then_the_first_view_keeps_the_model_and_takes_its_timeframe(conn):
    _insert(conn, "chronos-2", "1d", "BTC-USD", T0)
    _insert(conn, "kronos-base", "1h", "MSFT", None, T0)
    _insert(conn, "kronos-base", "1h", "AAPL", None, T0)

    assert model_catalog(conn, UNIVERSE, "kronos-base").first_view == View("kronos-base", "1h", "AAPL")


def test_when_the_default_model_has_no_rows_then_the_first_view_takes_the_first_model_by_kind_on_the_first_instrument(conn):
    _insert(conn, "chronos-2-ft-lora", "1d", "ETH-USD", T0)
    _insert(conn, "ensemble", "1d", "BTC-USD", T0)
    _insert(conn, "chronos-2", "1d", "MSFT", T0)
    _insert(conn, "chronos-2", "1d", "AAPL", T0 - timedelta(days=1))

    catalog = model_catalog(conn, UNIVERSE, "kronos-base")

    assert [(m.model_name, m.kind) for m in catalog.models] == [
        ("chronos-2", "zero-shot"), ("chronos-2-ft-lora", "challenger"), ("ensemble", "ensemble")]
    assert catalog.first_view == View("chronos-2", "1d", "AAPL")
    assert catalog.empty_reason is None


def test_when_a_series_has_several_rows_then_its_newest_origin_is_the_latest_as_of_or_created_at(conn):
    _insert(conn, "chronos-2", "1d", "AAPL", T0)
    _insert(conn, "chronos-2", "1d", "AAPL", T0 - timedelta(days=3), created_at=T0 + timedelta(days=1))
    _insert(conn, "kronos-base", "1d", "AAPL", None, T0 + timedelta(hours=2))

    catalog = model_catalog(conn, UNIVERSE, "kronos-base")

    assert [s for m in catalog.models for s in m.series] == [
        Series("kronos-base", "1d", "AAPL", T0 + timedelta(hours=2)), Series("chronos-2", "1d", "AAPL", T0)]


@pytest.mark.parametrize("name, described", [
    ("kronos-base", ("Kronos base", "incumbent")), ("chronos-2", ("Chronos-2", "zero-shot")),
    ("ensemble", ("Ensemble", "ensemble")), ("baseline-rw-vol", ("baseline-rw-vol", "baseline")),
    ("chronos-2-challenger", ("Chronos-2 fine-tuned", "challenger")),
    ("chronos-2-ft-2026-12", ("chronos-2-ft-2026-12", "challenger")),
])
def test_when_a_model_name_is_described_then_known_names_keep_their_kind_and_any_other_is_a_challenger(name, described):
    assert describe_model(name) == described


def test_when_scaled_error_rolls_then_each_point_weighs_the_window_dates_forecasts_by_their_steps():
    rows = [("m", "A", T0, 10, 1.0), ("m", "B", T0, 5, 4.0), ("m", "A", T0 + timedelta(days=1), 10, 2.0),
            ("m", "A", T0 + timedelta(days=2), 10, 6.0), ("rw", "A", T0, 10, 3.0)]
    frame = pl.DataFrame([(m, s, a, T0, 3, n, 0.0, e, 0.0, None, None) for m, s, a, n, e in rows],
                         schema=PER_FORECAST_SCHEMA, orient="row")

    rolled = rolling_scaled_mae(frame, window=2)

    assert rolled.rows() == [
        ("m", T0, pytest.approx((10 * 1.0 + 5 * 4.0) / 15)),
        ("m", T0 + timedelta(days=1), pytest.approx((10 + 20 + 20) / 25)),
        ("m", T0 + timedelta(days=2), pytest.approx((20 + 60) / 20)),
        ("rw", T0, 3.0),
    ]


def _sample_closes(instrument, end, n):
    bars, _ = SampleSource().bars([instrument], "1d", end, n)
    return dict(bars.select("ts", "close").iter_rows())


def test_when_past_forecasts_include_kronos_rows_then_each_step_meets_its_close_and_an_unreadable_row_is_left_out(conn):
    aapl = select_instruments(load_instruments(), ["AAPL"])[0]
    origins = list(next_bar_closes("XNAS", "1d", T0 - timedelta(days=30), 3))
    for i, origin in enumerate(origins):
        ts = next_bar_closes("XNAS", "1d", origin, 4)
        steps = [{"ts": t.isoformat(), "close": 200.0 + k} for k, t in enumerate(ts)]
        if i == 0:
            steps[2]["ts"] = "2026-02-30"  # looks like a date, is none: PostgreSQL refuses the whole read
        if i == 1:
            steps[2]["close"] = "n/a"  # not a number: that step alone is left out
        _insert(conn, "kronos-base", "1d", "AAPL", None, origin + timedelta(minutes=30), steps)
    now = origins[-1] + timedelta(days=2, hours=1)

    answer = past_forecasts(conn, SampleSource(), aapl, DAILY, "kronos-base", 3, now)

    closes = _sample_closes(aapl, now, 60)
    first_id = conn.execute("SELECT min(id) FROM ml_predictions").fetchone()[0]
    assert answer.unreadable_rows == [f'row {first_id} left out: date/time field value out of range: "2026-02-30"']
    assert [f.created_at for f in answer.forecasts] == [(o + timedelta(minutes=30)).isoformat() for o in origins[1:]]
    assert [len(f.steps) for f in answer.forecasts] == [3, 4]
    newest = answer.forecasts[1]
    assert [s["close"] for s in newest.steps] == [closes.get(datetime.fromisoformat(s["ts"])) for s in newest.steps]
    # Its steps close on 5, 6, 9 and 10 February; by now the first two have.
    assert (newest.realised_steps, newest.inside_band, newest.as_of) == (2, None, None)
    assert [s["p10"] for s in newest.steps] == [None] * 4
    # Bars: one horizon up to the first step drawn (4 February), then up to the newest closed bar (6 February).
    first_step = datetime.fromisoformat(answer.forecasts[0].steps[0]["ts"])
    assert [b["ts"] for b in answer.bars] == [t.isoformat() for t in sorted(closes) if t <= now][-12:]
    assert sum(datetime.fromisoformat(b["ts"]) <= first_step for b in answer.bars) == DAILY.horizon
    assert answer.bars_note is None and answer.empty_reason is None


def test_when_an_instrument_with_forecasts_has_no_bars_then_its_steps_wait_and_the_note_gives_the_sources_reason(
        conn, bar_files):
    aapl = select_instruments(load_instruments(), ["AAPL"])[0]
    steps = [{"step": 1, "ts": "2026-03-03T21:00:00+00:00", "p10": 1.0, "p50": 2.0, "p90": 3.0, "close": 2.0}]
    _insert(conn, "chronos-2", "1d", "AAPL", T0, steps=steps)

    answer = past_forecasts(conn, FileSource(bar_files.root), aapl, DAILY, "chronos-2", 5, T0 + timedelta(days=3))

    assert answer.bars == [] and answer.bars_note.startswith("no bars for AAPL: AAPL: no 1d bar file; tried ")
    assert [(f.realised_steps, f.inside_band, f.steps[0]["close"]) for f in answer.forecasts] == [(0, 0, None)]


def test_when_more_origins_are_asked_than_allowed_then_value_error_names_the_bound(conn):
    aapl = select_instruments(load_instruments(), ["AAPL"])[0]

    with pytest.raises(ValueError, match="n_origins must be from 1 to 20, got 21"):
        past_forecasts(conn, SampleSource(), aapl, DAILY, "chronos-2", 21, T0)


def test_when_weights_are_read_then_members_come_in_the_ensembles_order_and_a_member_only_left_out_is_listed(conn):
    def row(day: int, weights: dict, missing: dict) -> WeightsRow:
        return WeightsRow("AAPL", T0 + timedelta(days=day), weights, missing, {"warm_up": day == 0, "scored_forecasts": day})

    write_ensemble(conn, "1d", "ensemble-v1", {}, [
        row(0, {"baseline-rw-vol": {"location": 0.5, "band": 1.0}, "chronos-2": {"location": 0.5, "band": None}},
            {"kronos-base": "no kronos-base row written within 1 day after as_of"}),
        row(1, {"baseline-rw-vol": {"location": 0.2, "band": 0.7}, "chronos-2": {"location": 0.8, "band": 0.3}}, {}),
        row(2, {"baseline-rw-vol": {"location": 0.1, "band": 0.6}, "chronos-2": {"location": 0.9, "band": 0.4}}, {}),
    ])

    members, points = weights_history(conn, "1d", "AAPL", 2)

    assert members == ["chronos-2", "baseline-rw-vol"]
    assert [(p["as_of"], p["location"], p["warm_up"], p["scored_forecasts"]) for p in points] == [
        ((T0 + timedelta(days=1)).isoformat(), {"baseline-rw-vol": 0.2, "chronos-2": 0.8}, False, 1),
        ((T0 + timedelta(days=2)).isoformat(), {"baseline-rw-vol": 0.1, "chronos-2": 0.9}, False, 2)]
    assert weights_history(conn, "1d", "AAPL", 3)[0] == ["chronos-2", "kronos-base", "baseline-rw-vol"]
