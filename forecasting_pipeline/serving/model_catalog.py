"""The models a reader can pick: every ``model_name`` with rows in ``ml_predictions``, and the view to open on.

The names come from the table, never from a list kept here: a challenger written under a new
``model_name`` is offered as soon as it has a row, as the fine-tuned Chronos-2's shadow rows
(``chronos-2-challenger``) are. Only the label and kind of the names this project itself knows
are fixed (``describe_model``); any other name is a challenger. A model's series are the (timeframe, symbol) pairs it has rows for, each with the
origin of its newest row, so a reader can open on an instrument that has something to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from forecasting_pipeline.scoring.baselines import BASELINE_MODELS
from forecasting_pipeline.storage.ml_predictions import (
    CHALLENGER_MODEL_NAME,
    ENSEMBLE_MODEL_NAME,
    KRONOS_MODEL_NAME,
    MODEL_NAME,
    TIMEFRAMES,
)

#: Kinds in the order models are listed.
KINDS = ("incumbent", "zero-shot", "challenger", "ensemble", "baseline")

_KNOWN = {
    KRONOS_MODEL_NAME: ("Kronos base", "incumbent"),
    MODEL_NAME: ("Chronos-2", "zero-shot"),
    CHALLENGER_MODEL_NAME: ("Chronos-2 fine-tuned", "challenger"),
    ENSEMBLE_MODEL_NAME: ("Ensemble", "ensemble"),
}

# Every (model_name, timeframe, symbol) with rows, found by skipping through idx_ml_pred_latest (one
# index probe per series rather than a scan of a table that grows every hour), and the newest origin
# of each, the first entry of that series in the index's order.
_SERIES = """
WITH RECURSIVE series (model_name, timeframe, symbol) AS (
    (SELECT model_name, timeframe, symbol FROM ml_predictions ORDER BY model_name, timeframe, symbol LIMIT 1)
    UNION ALL
    SELECT nxt.model_name, nxt.timeframe, nxt.symbol
    FROM series s
    CROSS JOIN LATERAL (
        SELECT m.model_name, m.timeframe, m.symbol FROM ml_predictions m
        WHERE (m.model_name, m.timeframe, m.symbol) > (s.model_name, s.timeframe, s.symbol)
        ORDER BY m.model_name, m.timeframe, m.symbol
        LIMIT 1
    ) nxt
)
SELECT s.model_name, s.timeframe, s.symbol, newest.origin
FROM series s
CROSS JOIN LATERAL (
    SELECT COALESCE(m.as_of, m.created_at) AS origin FROM ml_predictions m
    WHERE m.model_name = s.model_name AND m.timeframe = s.timeframe AND m.symbol = s.symbol
    ORDER BY COALESCE(m.as_of, m.created_at) DESC, m.created_at DESC
    LIMIT 1
) newest
ORDER BY s.model_name, s.timeframe, s.symbol
"""


@dataclass(frozen=True)
class Series:
    """One model's rows for one timeframe and symbol: the origin of its newest row (``as_of``, else ``created_at``)."""

    model_name: str
    timeframe: str
    symbol: str
    newest_origin: datetime


@dataclass(frozen=True)
class CatalogModel:
    """A model with rows: its name as stored, a label for people, its kind, and its series."""

    model_name: str
    label: str
    kind: str
    series: tuple[Series, ...]

    def symbols(self, timeframe: str) -> list[str]:
        return [s.symbol for s in self.series if s.timeframe == timeframe]


@dataclass(frozen=True)
class View:
    """What to show first: a model, a timeframe and an instrument that has that model's rows."""

    model_name: str
    timeframe: str
    symbol: str


@dataclass(frozen=True)
class Catalog:
    """The models with rows, the view to open on, and, when there is none, why, in one line."""

    models: list[CatalogModel] = field(default_factory=list)
    first_view: View | None = None
    empty_reason: str | None = None


def describe_model(model_name: str) -> tuple[str, str]:
    """``(label, kind)`` of a model name: this project's names, the baselines, else a challenger."""
    if model_name in _KNOWN:
        return _KNOWN[model_name]
    if model_name in BASELINE_MODELS or model_name.startswith("baseline-"):
        return model_name, "baseline"
    return model_name, "challenger"


def kind_order(model_name: str) -> tuple[int, str]:
    """Sort key: by kind (``KINDS``), then by name."""
    return KINDS.index(describe_model(model_name)[1]), model_name


def stored_series(conn: psycopg.Connection) -> list[Series]:
    """Every (model_name, timeframe, symbol) with rows in ``ml_predictions``, with its newest origin."""
    return [Series(*row) for row in conn.execute(_SERIES).fetchall()]


def model_catalog(conn: psycopg.Connection, universe: Sequence[str], default_model: str) -> Catalog:
    """The models with rows, sorted by kind, and the first view over ``universe`` (symbols, in their order).

    The first view is the first model with rows for an instrument of ``universe`` (``default_model``
    before the others), at its first timeframe with such rows (``TIMEFRAMES`` order, daily first),
    on the first such instrument in ``universe`` order.
    """
    series = stored_series(conn)
    names = sorted({s.model_name for s in series}, key=kind_order)
    models = [CatalogModel(name, *describe_model(name), tuple(s for s in series if s.model_name == name))
              for name in names]
    view = _first_view(models, universe, default_model)
    return Catalog(models, view, None if view else _why_empty(models, universe))


def _first_view(models: list[CatalogModel], universe: Sequence[str], default_model: str) -> View | None:
    ordered = sorted(models, key=lambda m: m.model_name != default_model)
    for model in ordered:
        for timeframe in sorted(TIMEFRAMES, key=lambda t: t != "1d"):
            have = set(model.symbols(timeframe))
            for symbol in universe:
                if symbol in have:
                    return View(model.model_name, timeframe, symbol)
    return None


def _why_empty(models: list[CatalogModel], universe: Sequence[str]) -> str:
    if not models:
        return ("No forecasts yet: ml_predictions has no rows. Materialise a window (`make run`) "
                "or backfill, and this page shows them at its next refresh.")
    outside = sorted({s.symbol for m in models for s in m.series})
    shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    return (f"No forecasts for these instruments: ml_predictions holds rows of {', '.join(m.model_name for m in models)} "
            f"only for {shown}, none of which is among the {len(universe)} instruments this service knows "
            "(INSTRUMENTS_FILE).")
