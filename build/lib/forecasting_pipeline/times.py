"""Instants. The project's one convention: tz-aware UTC, with a naive value read as UTC.

Bars are labelled by the instant they close, and arrays of instants are int64 microseconds
since the Unix epoch (``datetime64[us]``), so these conversions are exact.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_US = timedelta(microseconds=1)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value is taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def checked_utc(value: object, what: str) -> datetime:
    """``as_utc`` of a ``datetime`` (pandas' Timestamp included); ValueError naming ``what`` for anything else."""
    to_pydatetime = getattr(value, "to_pydatetime", None)
    if to_pydatetime is not None:
        value = to_pydatetime()
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {type(value).__name__}: {value!r}")
    return as_utc(value)


def parse_utc(text: str) -> datetime:
    """An ISO 8601 instant, naive meaning UTC; ValueError when it is not one."""
    return as_utc(datetime.fromisoformat(text))


def epoch_us(value: datetime) -> int:
    """Microseconds since the Unix epoch, exact (no float rounding)."""
    return (as_utc(value) - EPOCH) // ONE_US


def from_epoch_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


def datetimes(values: np.ndarray) -> list[datetime]:
    """``datetime64`` (any unit) or int64 epoch-microsecond values as UTC datetimes."""
    us = values.astype("datetime64[us]").astype(np.int64) if values.dtype.kind == "M" else values.astype(np.int64)
    return [from_epoch_us(x) for x in us]
