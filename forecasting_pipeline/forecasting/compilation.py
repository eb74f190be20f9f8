"""Chronos-2's encoder compiled by ``torch.compile`` for the CPU calls long enough to repay it.

With bfloat16 on a CPU that has native bf16 matrix units, the matrix products of a pass are no
longer most of its time: the rest is element-wise work (layer norms, the feed-forward's ReLU,
casts and reshapes around attention), each op reading and writing the whole activation.
Inductor fuses those ops into a few loops. Compiling costs many passes' time the first time a
process meets a pass shape (less once inductor's on-disk cache holds it), so it pays only over
many passes: a backfill run's call, not a scheduled window's three passes.

``CHRONOS2_COMPILE`` chooses:

- ``auto``: CPU calls of at least ``COMPILE_MIN_PASSES`` full passes;
- ``on``: every CPU call, for a long-lived process whose calls share one pass shape;
- ``off``: never.

Only full passes run compiled, and at most ``MAX_COMPILED_SHAPES`` shapes per process; the last,
shorter pass of a call and any further shape run eagerly, so no call waits on a compilation it
would use once. A GPU call always runs eagerly. When compiling fails (no C++ compiler on the
machine, say), the failure is logged once and the model runs eagerly from then on: the forecast
is the same either way, within bfloat16's rounding.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

logger = logging.getLogger(__name__)

CompileSetting = Literal["auto", "on", "off"]
COMPILE_SETTINGS: tuple[str, ...] = ("auto", "on", "off")
# The full passes from which ``auto`` compiles: past this a run saves, on the measured per-pass
# gain (docs/performance.md), about twice what a first compilation costs.
COMPILE_MIN_PASSES = 600
# Distinct pass shapes one process compiles: a backfill's full passes have one shape, or two
# where early windows have less history than the context length.
MAX_COMPILED_SHAPES = 2

# The pass size of the call now running compiled on this thread, None when it runs eagerly.
_PASS_SIZE: contextvars.ContextVar[int | None] = contextvars.ContextVar("compiled_pass_size", default=None)


def should_compile(setting: str, device: str, n_series: int, pass_size: int) -> bool:
    """Whether a call of ``n_series`` series in passes of ``pass_size`` on ``device`` runs compiled."""
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {setting!r}")
    if device != "cpu" or setting == "off":
        return False
    return setting == "on" or n_series // pass_size >= COMPILE_MIN_PASSES


class CompiledEncoder:
    """Stands in for a Chronos-2 encoder's ``forward``: compiled full passes inside ``compiled_passes``, eager otherwise."""

    def __init__(self, encoder) -> None:
        self.eager = type(encoder).forward.__get__(encoder)
        self._compiled = None
        self.shapes: set[tuple[int, ...]] = set()
        self.compiled_passes = 0
        self.failure: str | None = None
        self._lock = threading.Lock()

    def __call__(self, inputs_embeds, *args, **kwargs):
        pass_size = _PASS_SIZE.get()
        if pass_size is None or not self._takes(inputs_embeds, pass_size):
            return self.eager(inputs_embeds, *args, **kwargs)
        try:
            out = self._compiled_forward()(inputs_embeds, *args, **kwargs)
        except Exception as exc:  # inductor's failures have no common base: any means "run eagerly"
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            self.failure = f"{type(exc).__name__}: {first_line}"
            logger.warning("compiling Chronos-2 failed (%s); the model runs eagerly in this process", self.failure)
            return self.eager(inputs_embeds, *args, **kwargs)
        self.compiled_passes += 1
        return out

    def _takes(self, inputs_embeds, pass_size: int) -> bool:
        shape = tuple(inputs_embeds.shape)
        if self.failure or inputs_embeds.device.type != "cpu" or shape[0] != pass_size:
            return False
        with self._lock:
            if shape not in self.shapes and len(self.shapes) < MAX_COMPILED_SHAPES:
                self.shapes.add(shape)
                logger.info("compiling Chronos-2 for passes of shape %s (CHRONOS2_COMPILE): this pass waits for it",
                            shape)
            return shape in self.shapes

    def _compiled_forward(self):
        with self._lock:
            if self._compiled is None:
                import torch

                self._compiled = torch.compile(self.eager, dynamic=False)
            return self._compiled


def compiled_encoder(pipeline) -> CompiledEncoder:
    """The pipeline's encoder forward as a ``CompiledEncoder``, installed on first use (the model object stays the same)."""
    encoder = pipeline.model.encoder
    forward = encoder.__dict__.get("forward")
    if not isinstance(forward, CompiledEncoder):
        forward = CompiledEncoder(encoder)
        encoder.forward = forward
    return forward


@contextmanager
def compiled_passes(pipeline, pass_size: int) -> Iterator[CompiledEncoder]:
    """Within the block, this thread's passes of ``pass_size`` series through ``pipeline`` run compiled."""
    encoder = compiled_encoder(pipeline)
    token = _PASS_SIZE.set(pass_size)
    try:
        yield encoder
    finally:
        _PASS_SIZE.reset(token)
