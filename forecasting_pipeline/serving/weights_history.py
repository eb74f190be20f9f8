"""The ensemble's weights of one instrument over time, from the explanation stored with each ensemble forecast.

Each ``ensemble_weights`` row (written by ``ensemble.window_ensembles`` in the transaction of its
forecast) gives every member present two weights: ``location`` (its share of the combined p50)
and ``band`` (its share of the band's shape, None for a point forecast such as Kronos's). A member
absent from a forecast has no weight there and a reason in ``missing``. This module turns the
rows into one point per forecast, JSON-ready, with the members in the ensemble's own order.
"""

from __future__ import annotations

import psycopg

from forecasting_pipeline.ensemble.members import MEMBERS
from forecasting_pipeline.storage.ensemble_weights import read_last_ensemble_weights

#: Most forecasts one answer covers.
MAX_FORECASTS = 2000


def weights_history(conn: psycopg.Connection, timeframe: str, symbol: str, last: int) -> tuple[list[str], list[dict]]:
    """``(members, points)``: the ``last`` newest ensemble forecasts' weights of one instrument, oldest first.

    ``members`` lists every member weighted or left out in any of them, known members first in
    ``MEMBERS`` order. Each point: ``as_of``, ``model_version``, ``location`` and ``band`` (member -> weight,
    None where it has no band), ``missing`` (member -> why it was left out), ``warm_up`` (weights
    still equal: too few scored forecasts), ``scored_forecasts`` and ``own_share`` (the weight of
    the instrument's own losses against those pooled over every instrument).
    """
    if not 1 <= last <= MAX_FORECASTS:
        raise ValueError(f"last must be from 1 to {MAX_FORECASTS}, got {last}")
    rows = read_last_ensemble_weights(conn, timeframe, symbol, last)
    seen = {member for row in rows for member in (*row["weights"], *row["missing"])}
    members = [m for m in MEMBERS if m in seen] + sorted(seen - set(MEMBERS))
    return members, [_point(row) for row in rows]


def _point(row: dict) -> dict:
    weights, details = row["weights"], row["details"]
    return {
        "as_of": row["as_of"].isoformat(),
        "model_version": row["model_version"],
        "location": {m: w.get("location") for m, w in weights.items()},
        "band": {m: w.get("band") for m, w in weights.items()},
        "missing": dict(row["missing"]),
        "warm_up": bool(details.get("warm_up", False)),
        "scored_forecasts": details.get("scored_forecasts"),
        "own_share": details.get("own_share"),
    }
