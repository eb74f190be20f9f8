"""The code location's definitions: assembled from the settings in the environment (``settings.py``)."""

from __future__ import annotations

from forecasting_pipeline.heap import freeze_import_time_objects, imports_without_collection

# What a run imports to load these definitions (polars, pandas, exchange_calendars, psycopg)
# lives until the process exits: no collections while it loads, and none over it after (heap.py).
with imports_without_collection():
    from forecasting_pipeline.orchestration.assembly import build_definitions
    from forecasting_pipeline.settings import Settings

defs = build_definitions(Settings.from_env())

# The definitions themselves live as long as the code location.
freeze_import_time_objects()
