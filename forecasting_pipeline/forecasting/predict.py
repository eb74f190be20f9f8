"""The batched Chronos-2 call: quantiles of every input series in one ``predict_quantiles``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

QUANTILE_LEVELS = (0.1, 0.5, 0.9)
# The 21 levels Chronos-2's quantile head is trained on (config.json of amazon/chronos-2). Asking
# for any of them selects the head's output; other levels would be interpolated.
MODEL_QUANTILE_LEVELS = (0.01, *(round(0.05 * i, 2) for i in range(1, 20)), 0.99)

# Chronos-2 decodes up to 64 patches of 16 steps in one pass; beyond that it unrolls
# autoregressively and quality degrades, so longer horizons are refused.
MAX_HORIZON = 1024


def check_horizon(horizon: int) -> None:
    """ValueError unless Chronos-2 forecasts ``horizon`` steps in one pass."""
    if not 1 <= horizon <= MAX_HORIZON:
        raise ValueError(f"unsupported horizon {horizon}: Chronos-2 forecasts 1 to {MAX_HORIZON} steps")


def predict_quantiles(
    pipeline,
    inputs: Sequence[dict],
    horizon: int,
    context_length: int,
    batch_size: int = 256,
    quantile_levels: Sequence[float] = QUANTILE_LEVELS,
    sort: bool = True,
) -> np.ndarray:
    """Run one batched Chronos-2 call and return quantiles of shape (n_series, horizon, n_levels).

    Quantiles are sorted along the last axis: Chronos-2's quantile heads are trained
    independently and can cross (p10 > p50), which a stored forecast must never show.
    ``sort=False`` returns them as the head gives them, for a caller that picks some levels
    and sorts those, so that its result equals a call made for those levels alone.
    """
    if not inputs:
        return np.empty((0, horizon, len(quantile_levels)), dtype=np.float64)
    quantiles, _median = pipeline.predict_quantiles(
        list(inputs),
        prediction_length=horizon,
        quantile_levels=list(quantile_levels),
        context_length=context_length,
        batch_size=batch_size,
    )
    # Each element is (n_targets=1, horizon, n_levels).
    stacked = np.stack([q[0].float().numpy() for q in quantiles]).astype(np.float64)
    return np.sort(stacked, axis=-1) if sort else stacked
