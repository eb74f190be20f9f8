"""The ensemble of Chronos-2, Kronos and the volatility-band random walk, weighted by how each has scored.

``members`` (where each member's forecast of an origin comes from, and why one is missing),
``history`` (members' past forecasts with their outcomes, as arrays per instrument), ``weights``
(the simplex grid and the per-occasion losses behind the weights, warm-up and shrinkage),
``combine`` (quantile averaging, the point member's shift, the conformal band) and
``window_ensembles`` (a run: every window's ensemble forecasts and their explanations). No
Dagster here; ``orchestration.ensemble_assets`` wraps it.
"""
