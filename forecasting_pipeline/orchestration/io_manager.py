"""An IO manager for per-window polars frames, storing the rows that windows share once.

Assets in the chain return ``{partition_key: DataFrame}`` so that a run covering a range of
windows (a backfill) stores each window separately, and a later run of one window reads exactly
that window back. Neighbouring windows' contexts overlap almost entirely, so a multi-window output
(``WindowFrames``, or any mapping of several windows) is stored as

- ``<asset>/_shared/<id>.arrow``: every block of rows once, uncompressed Arrow IPC (a memory copy to
  write, memory-mapped to read), with ``<id>.json`` listing the blocks' lengths;
- ``<asset>/<window>.rows.json``: per window, the shared file and its ``[block, offset, length]``
  slices in order.

A single window is stored whole as ``<asset>/<window>.arrow``. Whichever is written last for a
window is what it reads; files written before (Parquet) are still read. A run's input of many
windows that point into one shared file comes back as ``WindowFrames`` over it, read once.
Shared files stay when their windows are written again (a few MB per run and asset).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from forecasting_pipeline.market.window_frames import WindowFrames, window_frames_of

_WHOLE = (".arrow", ".parquet")
_SLICES = ".rows.json"
_SHARED = "_shared"


class PartitionedFramesIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[partition_key, polars.DataFrame]`` outputs as Arrow IPC files."""

    base_dir: str = Field(description="Folder for the frame files.")

    def _path(self, asset_key: dg.AssetKey, partition_key: str, suffix: str = ".arrow") -> Path:
        safe = partition_key.replace(":", "-").replace("/", "-")
        return Path(self.base_dir, *asset_key.path, f"{safe}{suffix}")

    def handle_output(self, context: dg.OutputContext, obj: Mapping[str, pl.DataFrame]) -> None:
        expected = set(context.asset_partition_keys)
        if set(obj) != expected:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: output holds windows {sorted(obj)[:3]}..., "
                f"expected {sorted(expected)[:3]}... ({len(expected)} windows)"
            )
        if len(obj) == 1:
            for key, frame in obj.items():
                self._write_whole(context.asset_key, key, frame)
        else:
            self._write_shared(context.asset_key, window_frames_of(obj))

    def _write_whole(self, asset_key: dg.AssetKey, key: str, frame: pl.DataFrame) -> None:
        path = self._path(asset_key, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.write_ipc(tmp, compression="uncompressed")
        tmp.replace(path)  # readers never see a half-written file
        for stale in (".parquet", _SLICES):
            self._path(asset_key, key, stale).unlink(missing_ok=True)

    def _write_shared(self, asset_key: dg.AssetKey, frames: WindowFrames) -> None:
        folder = Path(self.base_dir, *asset_key.path, _SHARED)
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        # The blocks first, then the windows' pointers: a pointer never names a missing file.
        rows = pl.concat(frames.blocks, rechunk=False) if frames.blocks else frames.empty
        rows.write_ipc(folder / f"{name}.arrow", compression="uncompressed")
        (folder / f"{name}.json").write_text(json.dumps(
            {"blocks": [len(b) for b in frames.blocks], "by_instrument": frames.by_instrument}
        ))
        for key, parts in frames.slices.items():
            path = self._path(asset_key, key, _SLICES)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"file": name, "slices": [list(p) for p in parts]}))
            tmp.replace(path)
            for stale in _WHOLE:
                self._path(asset_key, key, stale).unlink(missing_ok=True)

    def load_input(self, context: dg.InputContext) -> Mapping[str, pl.DataFrame]:
        keys = list(context.asset_partition_keys)
        pointers = {key: self._pointer(context.asset_key, key) for key in keys}
        files = {p["file"] for p in pointers.values() if p is not None}
        if len(keys) > 1 and None not in pointers.values() and len(files) == 1:
            blocks, empty, by_instrument = self._blocks(context.asset_key, files.pop())
            return WindowFrames(blocks, {key: pointers[key]["slices"] for key in keys}, empty, by_instrument)
        return {key: self.load_window(context.asset_key, key) for key in keys}

    def load_window(self, asset_key: dg.AssetKey, partition_key: str) -> pl.DataFrame:
        """One window's frame of ``asset_key``; FileNotFoundError when it was never materialised."""
        pointer = self._pointer(asset_key, partition_key)
        if pointer is not None:
            blocks, empty, _by_instrument = self._blocks(asset_key, pointer["file"])
            return WindowFrames(blocks, {partition_key: pointer["slices"]}, empty)[partition_key]
        for suffix in _WHOLE:
            path = self._path(asset_key, partition_key, suffix)
            if path.exists():
                return pl.read_ipc(path) if suffix == ".arrow" else pl.read_parquet(path)
        raise FileNotFoundError(
            f"{asset_key.to_user_string()} has not been materialised for window {partition_key} "
            f"({self._path(asset_key, partition_key)})"
        )

    def _pointer(self, asset_key: dg.AssetKey, partition_key: str) -> dict | None:
        try:
            return json.loads(self._path(asset_key, partition_key, _SLICES).read_text())
        except FileNotFoundError:
            return None

    def _blocks(self, asset_key: dg.AssetKey, name: str) -> tuple[list[pl.DataFrame], pl.DataFrame, bool]:
        """A shared file's blocks, an empty frame of their schema, and whether each holds one instrument."""
        folder = Path(self.base_dir, *asset_key.path, _SHARED)
        rows = pl.read_ipc(folder / f"{name}.arrow")
        layout = json.loads((folder / f"{name}.json").read_text())
        blocks, start = [], 0
        for length in layout["blocks"]:
            blocks.append(rows.slice(start, length))
            start += length
        return blocks, rows.clear(), layout["by_instrument"]
