"""Run-tunable knobs of the chain, set per run in the launchpad."""

# No `from __future__ import annotations` here: Dagster reads these annotations at decoration time.
import dagster as dg
from pydantic import Field

from forecasting_pipeline.market.validation import ValidationConfig


class HistoryConfig(dg.Config):
    history_bars: int | None = Field(
        default=None, description="Bars of history per instrument; the cadence's context length when unset."
    )
    # Bar-validation thresholds (forecasting_pipeline.market.validation.ValidationConfig documents each).
    min_history_bars: int = Field(default=ValidationConfig.min_history_bars, description="Fewer bars exclude the instrument.")
    jump_sigma: float = Field(default=ValidationConfig.jump_sigma, description="Returns beyond this many robust sigmas are reported.")
    max_missing_fraction: float = Field(
        default=ValidationConfig.max_missing_fraction, description="Share of calendar closes that may be missing."
    )
    max_stale_bars: int = Field(
        default=ValidationConfig.max_stale_bars, description="Calendar closes after the last bar that may be missing."
    )

    def validation(self) -> ValidationConfig:
        return ValidationConfig(
            min_history_bars=self.min_history_bars, jump_sigma=self.jump_sigma,
            max_missing_fraction=self.max_missing_fraction, max_stale_bars=self.max_stale_bars,
        )


class ForecastConfig(dg.Config):
    horizon: int | None = Field(default=None, description="Steps to forecast; the cadence default when unset (1h: 24, 1d: 10).")
    context_length: int | None = Field(
        default=None, description="Bars the model reads; the cadence default when unset (1h: 2048, 1d: 1024)."
    )
