"""Bar-close calendars: gaps, half days, weekends and forecast-step timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from forecasting_pipeline.market.calendars import (
    bar_close_array,
    bar_closes,
    bar_duration,
    last_bar_close,
    next_bar_closes,
    validate_calendar_name,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_when_nyse_holiday_then_no_hourly_or_daily_bars() -> None:
    # 2025-07-04 is Independence Day.
    assert bar_closes("XNYS", "1h", utc(2025, 7, 4), utc(2025, 7, 5)) == []
    assert bar_closes("XNYS", "1d", utc(2025, 7, 4), utc(2025, 7, 5)) == []


def test_when_normal_nyse_day_then_seven_hourly_bars_ending_at_the_close() -> None:
    closes = bar_closes("XNYS", "1h", utc(2025, 7, 2), utc(2025, 7, 3))

    assert closes == [
        utc(2025, 7, 2, 14, 30),
        utc(2025, 7, 2, 15, 30),
        utc(2025, 7, 2, 16, 30),
        utc(2025, 7, 2, 17, 30),
        utc(2025, 7, 2, 18, 30),
        utc(2025, 7, 2, 19, 30),
        utc(2025, 7, 2, 20, 0),
    ]


def test_when_winter_nyse_day_then_bars_follow_the_utc_shift() -> None:
    closes = bar_closes("XNYS", "1h", utc(2025, 1, 15), utc(2025, 1, 16))

    assert closes[0] == utc(2025, 1, 15, 15, 30)
    assert closes[-1] == utc(2025, 1, 15, 21, 0)
    assert len(closes) == 7


def test_when_nyse_half_day_then_four_bars_with_a_short_last_one() -> None:
    # The day after Thanksgiving 2025 closes at 13:00 New York.
    closes = bar_closes("XNYS", "1h", utc(2025, 11, 28), utc(2025, 11, 29))

    assert closes == [
        utc(2025, 11, 28, 15, 30),
        utc(2025, 11, 28, 16, 30),
        utc(2025, 11, 28, 17, 30),
        utc(2025, 11, 28, 18, 0),
    ]


def test_when_nyse_daily_then_one_close_per_session() -> None:
    closes = bar_closes("XNYS", "1d", utc(2025, 7, 1), utc(2025, 7, 8))

    assert closes == [
        utc(2025, 7, 1, 20),
        utc(2025, 7, 2, 20),
        utc(2025, 7, 3, 17),  # early close before the holiday
        utc(2025, 7, 7, 20),
    ]


def test_when_exchange_has_a_lunch_break_then_each_half_has_its_own_grid() -> None:
    # Hong Kong: 09:30-12:00 and 13:00-16:00 local, UTC+8.
    closes = bar_closes("XHKG", "1h", utc(2025, 7, 2), utc(2025, 7, 3))

    assert closes == [
        utc(2025, 7, 2, 2, 30),
        utc(2025, 7, 2, 3, 30),
        utc(2025, 7, 2, 4, 0),
        utc(2025, 7, 2, 6, 0),
        utc(2025, 7, 2, 7, 0),
        utc(2025, 7, 2, 8, 0),
    ]


@pytest.mark.parametrize("day", [utc(2025, 1, 1), utc(2025, 3, 9), utc(2025, 7, 6)])
def test_when_crypto_hourly_then_24_bars_every_day(day: datetime) -> None:
    closes = bar_closes("24/7", "1h", day, day + timedelta(days=1))

    assert len(closes) == 24
    assert closes[0] == day + timedelta(hours=1)
    assert closes[-1] == day + timedelta(days=1)


def test_when_crypto_daily_then_closes_at_midnight_utc_every_day() -> None:
    closes = bar_closes("24/7", "1d", utc(2025, 7, 4, 12), utc(2025, 7, 7, 12))

    assert closes == [utc(2025, 7, 5), utc(2025, 7, 6), utc(2025, 7, 7)]


def test_when_fx_weekend_in_winter_then_no_hourly_bars_from_friday_to_sunday_17_new_york() -> None:
    # Friday 2025-01-03 17:00 New York is 22:00 UTC; Sunday 17:00 is 22:00 UTC.
    closes = bar_closes("24/5", "1h", utc(2025, 1, 3, 20), utc(2025, 1, 6, 0))

    assert closes == [
        utc(2025, 1, 3, 21),
        utc(2025, 1, 3, 22),
        utc(2025, 1, 5, 23),
        utc(2025, 1, 6, 0),
    ]


def test_when_fx_weekend_in_summer_then_the_gap_moves_an_hour_earlier_in_utc() -> None:
    closes = bar_closes("24/5", "1h", utc(2025, 7, 11, 19), utc(2025, 7, 13, 23))

    assert closes == [
        utc(2025, 7, 11, 20),
        utc(2025, 7, 11, 21),
        utc(2025, 7, 13, 22),
        utc(2025, 7, 13, 23),
    ]


def test_when_fx_full_week_then_120_hourly_bars() -> None:
    closes = bar_closes("24/5", "1h", utc(2025, 7, 12), utc(2025, 7, 19))

    assert len(closes) == 120


def test_when_fx_daily_then_closes_at_17_new_york_on_weekdays_across_dst() -> None:
    closes = bar_closes("24/5", "1d", utc(2025, 3, 6), utc(2025, 3, 12))

    assert closes == [
        utc(2025, 3, 6, 22),
        utc(2025, 3, 7, 22),
        utc(2025, 3, 10, 21),  # DST started on Sunday 2025-03-09
        utc(2025, 3, 11, 21),
    ]


def test_when_start_equals_a_close_then_it_is_excluded_and_end_is_included() -> None:
    closes = bar_closes("24/7", "1h", utc(2025, 1, 1, 3), utc(2025, 1, 1, 5))

    assert closes == [utc(2025, 1, 1, 4), utc(2025, 1, 1, 5)]


def test_when_end_is_not_after_start_then_no_closes() -> None:
    assert bar_closes("XNYS", "1h", utc(2025, 7, 2), utc(2025, 7, 2)) == []
    assert bar_closes("24/7", "1d", utc(2025, 7, 3), utc(2025, 7, 2)) == []


def test_when_times_are_naive_then_they_are_read_as_utc() -> None:
    aware = bar_closes("24/5", "1h", utc(2025, 1, 3, 20), utc(2025, 1, 6, 0))
    naive = bar_closes("24/5", "1h", datetime(2025, 1, 3, 20), datetime(2025, 1, 6, 0))

    assert naive == aware


def test_when_two_years_of_nyse_hours_are_requested_then_every_session_bar_is_there() -> None:
    closes = bar_closes("XNYS", "1h", utc(2024, 1, 1), utc(2026, 1, 1))

    assert len(closes) == 3496


def test_when_array_form_is_used_then_it_matches_the_list_form() -> None:
    closes = bar_closes("XNAS", "1h", utc(2025, 6, 1), utc(2025, 7, 1))
    array = bar_close_array("XNAS", "1h", utc(2025, 6, 1), utc(2025, 7, 1))

    assert str(array.dtype) == "datetime64[us]"
    assert [value.replace(tzinfo=timezone.utc) for value in array.tolist()] == closes


def test_when_next_closes_cross_a_weekend_then_monday_bars_follow_friday() -> None:
    after = utc(2025, 7, 11, 20)  # Friday, final NYSE bar of the week

    assert next_bar_closes("XNYS", "1h", after, 3) == [
        utc(2025, 7, 14, 14, 30),
        utc(2025, 7, 14, 15, 30),
        utc(2025, 7, 14, 16, 30),
    ]
    assert next_bar_closes("24/5", "1h", utc(2025, 7, 11, 21), 2) == [
        utc(2025, 7, 13, 22),
        utc(2025, 7, 13, 23),
    ]


def test_when_next_daily_closes_cross_a_holiday_then_it_is_skipped() -> None:
    assert next_bar_closes("XNYS", "1d", utc(2025, 7, 3, 17), 3) == [
        utc(2025, 7, 7, 20),
        utc(2025, 7, 8, 20),
        utc(2025, 7, 9, 20),
    ]


def test_when_many_next_closes_are_asked_then_exactly_n_ascending_come_back() -> None:
    closes = next_bar_closes("XNYS", "1d", utc(2025, 1, 1), 300)

    assert len(closes) == 300
    assert all(a < b for a, b in zip(closes, closes[1:]))
    assert closes[0] == utc(2025, 1, 2, 21)


def test_when_n_is_not_positive_then_next_bar_closes_raises() -> None:
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        next_bar_closes("24/7", "1h", utc(2025, 1, 1), 0)


def test_when_asked_on_a_weekend_then_last_bar_close_is_fridays() -> None:
    assert last_bar_close("XNYS", "1h", utc(2025, 7, 13, 12)) == utc(2025, 7, 11, 20)
    assert last_bar_close("XNYS", "1d", utc(2025, 7, 13, 12)) == utc(2025, 7, 11, 20)
    assert last_bar_close("24/5", "1h", utc(2025, 7, 13, 12)) == utc(2025, 7, 11, 21)
    assert last_bar_close("24/5", "1d", utc(2025, 7, 13, 12)) == utc(2025, 7, 11, 21)


def test_when_asked_exactly_at_a_close_then_last_bar_close_returns_it() -> None:
    assert last_bar_close("24/7", "1h", utc(2025, 7, 13, 12)) == utc(2025, 7, 13, 12)
    assert last_bar_close("24/7", "1d", utc(2025, 7, 13, 12)) == utc(2025, 7, 13)


def test_when_calendar_name_is_unknown_then_the_message_lists_the_allowed_forms() -> None:
    with pytest.raises(ValueError, match=r"unknown calendar 'NYSE-ISH'.*'24/7'.*'24/5'.*XNYS"):
        validate_calendar_name("NYSE-ISH")
    with pytest.raises(ValueError, match="unknown calendar '24/6'"):
        bar_closes("24/6", "1h", utc(2025, 1, 1), utc(2025, 1, 2))


def test_when_calendar_name_is_known_then_validation_passes() -> None:
    for name in ("24/7", "24/5", "XNYS", "XNAS", "XLON"):
        validate_calendar_name(name)


def test_when_cadence_is_unknown_then_it_raises() -> None:
    with pytest.raises(ValueError, match=r"unknown cadence '5m'"):
        bar_closes("24/7", "5m", utc(2025, 1, 1), utc(2025, 1, 2))
    with pytest.raises(ValueError, match=r"unknown cadence '1w'"):
        bar_duration("1w")


def test_when_range_is_beyond_the_built_exchange_calendar_then_it_raises() -> None:
    with pytest.raises(ValueError, match=r"calendar 'XNYS': range .* is outside the sessions"):
        bar_closes("XNYS", "1d", utc(2090, 1, 1), utc(2090, 2, 1))


def test_when_cadence_is_known_then_bar_duration_is_its_length() -> None:
    assert bar_duration("1h") == timedelta(hours=1)
    assert bar_duration("1d") == timedelta(days=1)
