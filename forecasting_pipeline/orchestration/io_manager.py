"""An IO manager for per-window polars frames: one Parquet file per asset and partition.

Assets in the chain return ``{partition_key: DataFrame}`` so that a run covering a range of
windows (a backfill) stores each window separately, and a later run of one window reads
exactly that window back.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field


class PartitionedFramesIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[partition_key, polars.DataFrame]`` outputs as Parquet files."""

    base_dir: str = Field(description="Folder for the Parquet files.")

    def _path(self, asset_key: dg.AssetKey, partition_key: str) -> Path:
        safe = partition_key.replace(":", "-").replace("/", "-")
        return Path(self.base_dir, *asset_key.path, f"{safe}.parquet")

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
            frame.write_parquet(tmp)
            tmp.replace(path)  # readers never see a half-written file

    def load_input(self, context: dg.InputContext) -> dict[str, pl.DataFrame]:
        frames = {}
        for key in context.asset_partition_keys:
            path = self._path(context.asset_key, key)
            if not path.exists():
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} has not been materialised for window {key} ({path})"
                )
            frames[key] = pl.read_parquet(path)
        return frames
