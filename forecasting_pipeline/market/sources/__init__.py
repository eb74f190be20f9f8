"""Market data: where bars come from and the one shape they all arrive in.

Sources (synthetic sample, local files, a PostgreSQL table) each return a
bars frame as defined in :mod:`forecasting_pipeline.market.sources.schema`:
columns ``symbol, ts, open, high, low, close, volume``, ``ts`` the bar close
in UTC, sorted by ``ts``. Checking that the bars are sane is left to the
validation step.
"""

from forecasting_pipeline.market.sources.files import find_bar_file, read_bar_file, read_bars_from_files
from forecasting_pipeline.market.sources.postgres import BarTable, read_bars_from_table
from forecasting_pipeline.market.sources.sample import SAMPLE_IS_SYNTHETIC_NOTE, sample_bars
from forecasting_pipeline.market.sources.schema import (
    BAR_COLUMNS,
    BARS_SCHEMA,
    NUMERIC_COLUMNS,
    PRICE_COLUMNS,
    TS_DTYPE,
    coerce_bars,
    empty_bars,
)

__all__ = [
    "BAR_COLUMNS",
    "BARS_SCHEMA",
    "NUMERIC_COLUMNS",
    "PRICE_COLUMNS",
    "SAMPLE_IS_SYNTHETIC_NOTE",
    "TS_DTYPE",
    "BarTable",
    "coerce_bars",
    "empty_bars",
    "find_bar_file",
    "read_bar_file",
    "read_bars_from_files",
    "read_bars_from_table",
    "sample_bars",
]
