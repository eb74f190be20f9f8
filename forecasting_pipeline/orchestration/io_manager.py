"""An IO manager for per-window polars frames: one Arrow IPC file per asset, partition and run.

Assets in the chain return ``{partition_key: DataFrame}`` so that a run covering a range of
windows (a backfill) stores each window separately, and a later run of one window reads
exactly that window back. Neighbouring windows' contexts overlap almost entirely, so a backfill
writes and reads many similar frames: uncompressed Arrow IPC costs little more than a memory
copy to write and is memory-mapped to read. Files written before (Parquet, one per window) are
still read.

Each run writes its own file of a window (``{asset}/{window}/{run_id}.arrow``), under a temporary
name of its own that is renamed into place when complete: two runs of one window at once (a
scheduled run and a retry or a backfill) never read each other's half-written file or each
other's frames, and a re-execution reads the frames of the run it re-executes.

Frames only carry a window from one step to the next. Retention: once the write step of a run
has committed a window's rows (or found nothing to write for it), it deletes that window's
frames of the run and of the runs it re-executes (``release``); frames no write step released (a
run that failed before writing, or whose window is never re-run) are deleted after
``retention_days`` by the next write step (``sweep``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

logger = logging.getLogger(__name__)

_LEGACY_FORMATS = (".arrow", ".parquet")
_FRAME = ".arrow"
_TEMPORARY = ".tmp"
DEFAULT_RETENTION_DAYS = 7


class PartitionedFramesIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[partition_key, polars.DataFrame]`` outputs as Arrow IPC files, one per run."""

    base_dir: str = Field(description="Folder for the frame files.")
    retention_days: int = Field(
        default=DEFAULT_RETENTION_DAYS,
        description="Days a frame no write step released is kept, e.g. for a re-execution of a failed run "
        "(FRAMES_RETENTION_DAYS).",
    )

    def _window_dir(self, asset_key: dg.AssetKey, partition_key: str) -> Path:
        safe = partition_key.replace(":", "-").replace("/", "-")
        return Path(self.base_dir, *asset_key.path, safe)

    def _path(self, asset_key: dg.AssetKey, partition_key: str, run_id: str) -> Path:
        return self._window_dir(asset_key, partition_key) / f"{run_id}{_FRAME}"

    def _legacy_paths(self, asset_key: dg.AssetKey, partition_key: str) -> list[Path]:
        folder = self._window_dir(asset_key, partition_key)
        return [folder.with_name(folder.name + suffix) for suffix in _LEGACY_FORMATS]

    def handle_output(self, context: dg.OutputContext, obj: dict[str, pl.DataFrame]) -> None:
        expected = set(context.asset_partition_keys)
        if set(obj) != expected:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: output holds windows {sorted(obj)[:3]}..., "
                f"expected {sorted(expected)[:3]}... ({len(expected)} windows)"
            )
        for key, frame in obj.items():
            self.write_window(context.asset_key, key, context.run_id, frame)

    def write_window(self, asset_key: dg.AssetKey, partition_key: str, run_id: str, frame: pl.DataFrame) -> Path:
        """Publish one window's frame of a run whole: written under a unique temporary name, then renamed."""
        path = self._path(asset_key, partition_key, run_id)
        # Unique per writer: a retry or a second process writing the same file never shares its temporary.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TEMPORARY}")
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                frame.write_ipc(tmp, compression="uncompressed")
                os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a part
                return path
            except FileNotFoundError:
                # Another run's release or sweep removed the folder, empty a moment ago: make it again.
                if attempt == 2:
                    raise
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def load_input(self, context: dg.InputContext) -> dict[str, pl.DataFrame]:
        upstream = context.upstream_output
        # The run that produced the input: this run, or in a re-execution the run re-executed. For an
        # input materialised by an unrelated run, Dagster names this run, and the newest frame is read.
        runs = [upstream.run_id] if upstream is not None else []
        return {key: self.load_window(context.asset_key, key, runs) for key in context.asset_partition_keys}

    def load_window(self, asset_key: dg.AssetKey, partition_key: str, run_ids: Iterable[str] = ()) -> pl.DataFrame:
        """One window's frame of ``asset_key``: that of the first of ``run_ids`` that has one, else the newest.

        Raises FileNotFoundError when the window has no frame: never materialised, or released
        once its rows were committed (materialise the chain from its first asset again).
        """
        for run_id in run_ids:
            path = self._path(asset_key, partition_key, run_id)
            if path.exists():
                return pl.read_ipc(path)
        folder = self._window_dir(asset_key, partition_key)
        found = sorted(folder.glob(f"*{_FRAME}"), key=_mtime, reverse=True) if folder.is_dir() else []
        for path in found + [p for p in self._legacy_paths(asset_key, partition_key) if p.exists()]:
            return pl.read_ipc(path) if path.suffix == _FRAME else pl.read_parquet(path)
        raise FileNotFoundError(
            f"{asset_key.to_user_string()} has no frame for window {partition_key} in {folder}: it was never "
            "materialised there, or its frames were deleted once the window's rows were committed. Materialise "
            "the window's chain from its first asset."
        )

    def release(self, asset_keys: Iterable[dg.AssetKey], partition_keys: Iterable[str], run_ids: Iterable[str]) -> int:
        """Delete these windows' frames written by ``run_ids`` (a run and the runs it re-executes), and
        frames of the layout before (one file per window); the number of files deleted.

        Another run's frames of the same windows are left alone: that run may still be reading them.
        """
        runs = {r for r in run_ids if r}
        deleted = 0
        for asset_key in asset_keys:
            for key in partition_keys:
                paths = [self._path(asset_key, key, r) for r in runs] + self._legacy_paths(asset_key, key)
                deleted += sum(_unlink(path) for path in paths)
                _remove_if_empty(self._window_dir(asset_key, key))
        return deleted

    def sweep(self, now: float | None = None) -> int:
        """Delete every frame (and abandoned temporary file) older than ``retention_days``; the number deleted."""
        root = Path(self.base_dir)
        if not root.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        deleted = 0
        for folder, _subdirs, files in os.walk(root, topdown=False):
            for name in files:
                path = Path(folder, name)
                if name.endswith((_FRAME, _TEMPORARY, ".parquet")) and _mtime(path) < cutoff:
                    deleted += _unlink(path)
            if Path(folder) != root:
                _remove_if_empty(Path(folder))
        if deleted:
            logger.info("deleted %d frame files older than %d days under %s", deleted, self.retention_days, root)
        return deleted


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # deleted meanwhile: never "old"


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another run's frames), or already gone
