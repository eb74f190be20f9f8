"""A model whose weights live in host memory and are lent to the GPU for one call at a time.

Loading a checkpoint (``from_pretrained``) on every GPU call costs more than the call itself.
Instead the weights are loaded once into host memory, page-locked ("pinned") on the first GPU
call so that the copy to the card runs at full bus speed, and for each call every parameter and
buffer of the module is pointed at a device copy. Afterwards the module points at its host
tensors again and the device copies are dropped, so the card's memory can be given back before
the GPU lock is. With ``resident`` the device copy stays between calls, for a card no one else
uses; it goes back to the host only when a call fails or the CPU needs the model.

Only tensors are swapped (``tensor.data``, as ``torch.nn.Module.to`` does), so the module, the
pipeline around it and everything that holds them stay the same objects. The CUDA calls go through
``device.Cuda``, so this runs (and is tested) without a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forecasting_pipeline.forecasting.device import Cuda


class HostModel:
    """A ``torch.nn.Module`` kept in host memory, lent to one GPU call at a time (see the module docstring)."""

    def __init__(self, module) -> None:
        self.module = module
        # Parameters and buffers, each once (tied weights are one parameter object).
        self._tensors = [*module.parameters(), *module.buffers()]
        self._host = [t.data for t in self._tensors]
        self._pinned = False
        self._on_device = False
        # Held while the module is lent, and by CPU calls, so the two never meet on one module.
        self.lock = threading.RLock()

    @property
    def on_device(self) -> bool:
        return self._on_device

    @property
    def pinned(self) -> bool:
        return self._pinned

    @contextmanager
    def lent(self, cuda: Cuda, resident: bool = False) -> Iterator[None]:
        """The module on the GPU for the block, back on the host after it (unless ``resident`` and the block succeeded)."""
        with self.lock:
            succeeded = False
            try:
                if not self._on_device:
                    self._pin(cuda)
                    # Marked first: a copy that fails half-way is still undone in full below.
                    self._on_device = True
                    for tensor, host in zip(self._tensors, self._host):
                        tensor.data = cuda.to_device(host)
                yield
                succeeded = True
            finally:
                if not (resident and succeeded):
                    self.return_to_host()

    @contextmanager
    def on_host(self) -> Iterator[None]:
        """The module on the host for the block (a CPU call), taking it back from the GPU if it stayed there."""
        with self.lock:
            self.return_to_host()
            yield

    def return_to_host(self) -> None:
        """Point every tensor at its host copy again; the device copies are freed when no one else holds them."""
        with self.lock:
            if not self._on_device:
                return
            for tensor, host in zip(self._tensors, self._host):
                tensor.data = host
            self._on_device = False

    def _pin(self, cuda: Cuda) -> None:
        """Page-lock the host copy once; a copy that cannot be pinned raises (the caller falls back to the CPU)."""
        if self._pinned:
            return
        pinned = [cuda.pin_memory(host) for host in self._host]
        for tensor, host in zip(self._tensors, pinned):
            tensor.data = host
        self._host = pinned
        self._pinned = True
