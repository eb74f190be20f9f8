"""Market data: where bars come from and the one shape they all arrive in.

Sources (synthetic sample, local files, a PostgreSQL table) each return a
bars frame as defined in :mod:`forecasting_pipeline.market.sources.schema`:
columns ``symbol, ts, open, high, low, close, volume``, ``ts`` the bar close
in UTC, sorted by ``ts``. Checking that the bars are sane is left to the
validation step.
"""

from forecasting_pipeline.market.sources.files import FileSource
from forecasting_pipeline.market.sources.postgres import BarTable, TableSource
from forecasting_pipeline.market.sources.sample import SampleSource
from forecasting_pipeline.market.sources.schema import BarSource

__all__ = ["BarSource", "BarTable", "FileSource", "SampleSource", "TableSource"]
