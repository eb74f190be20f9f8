"""Per-window frames whose rows are slices of shared blocks: the windows of a backfill run, held once.

Neighbouring windows' contexts overlap almost entirely: 240 hourly windows of 2,048 bars each hold
the same bars 240 times over. ``WindowFrames`` keeps each instrument's bars once (a *block*) and,
per window, which rows of which blocks make that window's frame, in order. Reading a window
concatenates zero-copy slices, so it is the same frame a run of that window alone would hold.

A row-wise transformation (one output row per input row, in order) is applied once per block with
``map_blocks``, and the windows' frames follow. The frames IO manager stores the blocks once and
each window as a list of row ranges (``io_manager``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import polars as pl

# (block index, first row, row count)
Slice = tuple[int, int, int]


class WindowFrames(Mapping[str, pl.DataFrame]):
    """Window key -> its frame, each frame the concatenation of slices of ``blocks``.

    Parameters
    ----------
    blocks
        Frames of one schema (``empty``'s). Each window's frame is built from them, never copied.
    slices
        Window key -> ``(block, offset, length)`` slices, in the order its frame concatenates them.
    empty
        A frame with no rows and the blocks' schema: the frame of a window without slices.
    by_instrument
        Whether each block holds one instrument's rows in time order, so that each slice is one
        instrument of its window (``read_window_bars`` builds them so).
    """

    def __init__(
        self, blocks: Sequence[pl.DataFrame], slices: Mapping[str, Sequence[Slice]], empty: pl.DataFrame,
        by_instrument: bool = False,
    ) -> None:
        self.blocks = list(blocks)
        self.slices = {window: [tuple(part) for part in parts] for window, parts in slices.items()}
        self.empty = empty.clear()
        self.by_instrument = by_instrument
        for window, parts in self.slices.items():
            for block, offset, length in parts:
                if not (0 <= block < len(self.blocks) and 0 <= offset and offset + length <= len(self.blocks[block])):
                    raise ValueError(f"window {window}: slice {(block, offset, length)} is outside the blocks")

    def __getitem__(self, window: str) -> pl.DataFrame:
        parts = [self.blocks[block].slice(offset, length) for block, offset, length in self.slices[window]]
        return pl.concat(parts, rechunk=False) if parts else self.empty

    def __iter__(self) -> Iterator[str]:
        return iter(self.slices)

    def __len__(self) -> int:
        return len(self.slices)

    def rows(self) -> int:
        """Rows over every window (counting shared rows once per window that holds them)."""
        return sum(length for parts in self.slices.values() for _block, _offset, length in parts)

    def map_blocks(self, transform: Callable[[pl.DataFrame], pl.DataFrame]) -> WindowFrames:
        """``transform`` applied to each block once: it must return one row per input row, in the same order."""
        blocks = [transform(block) for block in self.blocks]
        for before, after in zip(self.blocks, blocks):
            if len(after) != len(before):
                raise ValueError(f"a row-wise transform returned {len(after)} rows for a block of {len(before)}")
        return WindowFrames(blocks, self.slices, transform(self.empty), self.by_instrument)

    def window_blocks(self, window: str) -> list[pl.DataFrame]:
        """The window's frame as its slices, one per block (an instrument each, for bars)."""
        return [self.blocks[block].slice(offset, length) for block, offset, length in self.slices[window]]


def window_frames_of(frames: Mapping[str, pl.DataFrame]) -> WindowFrames:
    """A ``Mapping`` of window frames as ``WindowFrames`` (itself, or one block per window)."""
    if isinstance(frames, WindowFrames):
        return frames
    blocks = list(frames.values())
    empty = blocks[0].clear() if blocks else pl.DataFrame()
    return WindowFrames(blocks, {w: [(i, 0, len(f))] for i, (w, f) in enumerate(frames.items())}, empty)
