"""Scoring stored forecasts against realised bars, without Dagster.

``frames`` (the frames passed around), ``baselines`` (random walk and its volatility band, the
point-in-time history), ``losses`` (per step and per forecast), ``scores`` (additive sums per
model, symbol and step, and their summary), ``coverage`` (band rates, Kupiec), ``rolling`` (series
over forecast dates), ``canaries`` (sign flips of a loss difference, coverage alarms),
``forecasts`` (Kronos placement, realised / pending / not scored) and ``evaluation`` (a scoring
run over the stored tables, and the review of what is stored).
"""
