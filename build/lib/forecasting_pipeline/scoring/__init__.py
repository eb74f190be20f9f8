"""Scoring stored forecasts against realised bars: baselines, losses, coverage, canaries and evaluation."""
