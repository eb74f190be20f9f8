"""Dagster: resources, partitions, the asset chain and scoring assets, schedules, backfills and instance storage.

The only layer that imports Dagster. The layers beside it (market, forecasting, storage, scoring,
serving) never import from here.
"""
