"""An IO manager for per-window polars frames: one Arrow IPC file per asset and partition.

Assets in the chain return ``{partition_key: DataFrame}`` so that a run covering a range of
windows (a backfill) stores each window separately, and a later run of one window reads
exactly that window back. Neighbouring windows' contexts overlap almost entirely, so a backfill
writes and reads many similar frames: uncompressed Arrow IPC costs little more than a memory
copy to write and is memory-mapped to read. Files written before (Parquet) are still read.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

_FORMATS = (".arrow", ".parquet")


class PartitionedFramesIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[partition_key, polars.DataFrame]`` outputs as Arrow IPC files."""

    base_dir: str = Field(description="Folder for the frame files.")

    def _path(self, asset_key: dg.AssetKey, partition_key: str, suffix: str = ".arrow") -> Path:
        safe = partition_key.replace(":", "-").replace("/", "-")
        return Path(self.base_dir, *asset_key.path, f"{safe}{suffix}")

    def handle_output(self, context: dg.OutputContext, obj: dict[str, pl.DataFrame]) -> None:
        expected = set(context.asset_partition_keys)
        if set(obj) != expected:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: output holds windows {sorted(obj)[:3]}..., "
                f"expected {sorted(expected)[:3]}... ({len(expected)} windows)"
            )
        for key, frame in obj.items():
            path = self._path(context.asset_key, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            frame.write_ipc(tmp, compression="uncompressed")
            tmp.replace(path)  # readers never see a half-written file
            self._path(context.asset_key, key, ".parquet").unlink(missing_ok=True)

    def load_input(self, context: dg.InputContext) -> dict[str, pl.DataFrame]:
        return {key: self.load_window(context.asset_key, key) for key in context.asset_partition_keys}

    def load_window(self, asset_key: dg.AssetKey, partition_key: str) -> pl.DataFrame:
        """One window's frame of ``asset_key``; FileNotFoundError when it was never materialised."""
        for suffix in _FORMATS:
            path = self._path(asset_key, partition_key, suffix)
            if path.exists():
                return pl.read_ipc(path) if suffix == ".arrow" else pl.read_parquet(path)
        raise FileNotFoundError(
            f"{asset_key.to_user_string()} has not been materialised for window {partition_key} "
            f"({self._path(asset_key, partition_key)})"
        )
