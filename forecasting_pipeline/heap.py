"""Keeps Python's cyclic garbage collector off the objects that imports leave behind.

A run process imports Dagster, SQLAlchemy, polars, pandas and exchange_calendars, and, when it
loads the model itself, torch, transformers and chronos: hundreds of thousands of objects that
live until the process exits. The collector walks all of them in every full collection, and
imports trigger many, a measurable share of what a run adds to the model call (docs/performance.md).

``gc.freeze()`` moves every object that exists at that moment to a permanent generation that
collections skip, and ``imports_without_collection`` also holds collections off while a block of
imports runs. Reference counting still frees frozen objects as usual. Only a reference cycle
among them would never be collected, and for module-level objects that live as long as the
process that loses nothing.

Freezing happens only while a process starts up: once after each group of long-lived imports
(the definitions, the instance's storages, torch and chronos on their first use). Nothing that
runs per model load or per batch freezes, so a long-lived process's frozen set does not grow.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def freeze_import_time_objects() -> None:
    """Leave every object that exists now out of future collections; call right after heavy imports."""
    gc.freeze()


@contextmanager
def imports_without_collection() -> Iterator[None]:
    """Run a block of imports with the collector paused, then freeze what they created."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
