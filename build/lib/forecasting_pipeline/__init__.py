"""Chronos-2 quantile forecasts as partitioned Dagster assets, written beside Kronos in ml_predictions."""

__version__ = "0.1.0"
