"""An IO manager for per-window polars frames: each run's own files, with the rows a run's windows share stored once.

Assets in the chain return ``{partition_key: DataFrame}`` so that a run covering a range of
windows (a backfill) stores each window separately, and a later run of one window reads
exactly that window back. Uncompressed Arrow IPC costs little more than a memory copy to write
and is memory-mapped to read. Files written before (Parquet, one per window) are still read.

Each run writes files of its own:

- one window: ``{asset}/{window}/{run_id}.arrow``, the window's frame whole;
- several windows (``WindowFrames``, or any mapping of several): their contexts overlap almost
  entirely, so the run's rows go once to ``{asset}/_shared/{run_id}.{id}.arrow``, with its
  layout, ``{run_id}.{id}.json``: the blocks, and each window's ``[block, offset, length]`` slices
  in order. A run's input of many windows of one shared file comes back as ``WindowFrames`` over
  it, read once. The layout is the only index: a backfill run writes two files per asset, not
  one per window. (Pointer files of the layout before, ``{asset}/{window}/{run_id}.rows.json``,
  are still read.)

Every file is written under a temporary name of its own and renamed into place when complete:
two runs of one window at once (a scheduled run and a retry or a backfill) never read each
other's half-written file or each other's frames, and a re-execution reads the frames of the run
it re-executes.

Frames only carry a window from one step to the next. Retention: once the write step of a run
has committed a window's rows (or found nothing to write for it), it deletes that window's
frames of the run and of the runs it re-executes: a shared file's layout drops the window, and
the file goes once its layout holds none (``release``); files no write step released (a run that failed before writing, or
whose window is never re-run) are deleted after ``retention_days`` by the next write step (``sweep``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from forecasting_pipeline.market.window_frames import WindowFrames, window_frames_of

logger = logging.getLogger(__name__)

_LEGACY_FORMATS = (".arrow", ".parquet")
_FRAME = ".arrow"
_SLICES = ".rows.json"
_LAYOUT = ".json"
_SHARED = "_shared"
_TEMPORARY = ".tmp"
DEFAULT_RETENTION_DAYS = 7


class PartitionedFramesIOManager(dg.ConfigurableIOManager):
    """Stores ``dict[partition_key, polars.DataFrame]`` outputs as Arrow IPC files of each run."""

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

    def _pointer_path(self, asset_key: dg.AssetKey, partition_key: str, run_id: str) -> Path:
        return self._window_dir(asset_key, partition_key) / f"{run_id}{_SLICES}"

    def _shared_dir(self, asset_key: dg.AssetKey) -> Path:
        return Path(self.base_dir, *asset_key.path, _SHARED)

    def _legacy_paths(self, asset_key: dg.AssetKey, partition_key: str) -> list[Path]:
        folder = self._window_dir(asset_key, partition_key)
        return [folder.with_name(folder.name + suffix) for suffix in _LEGACY_FORMATS]

    def handle_output(self, context: dg.OutputContext, obj: Mapping[str, pl.DataFrame]) -> None:
        expected = set(context.asset_partition_keys)
        if set(obj) != expected:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: output holds windows {sorted(obj)[:3]}..., "
                f"expected {sorted(expected)[:3]}... ({len(expected)} windows)"
            )
        if len(obj) == 1:
            for key, frame in obj.items():
                self.write_window(context.asset_key, key, context.run_id, frame)
        else:
            self.write_windows(context.asset_key, context.run_id, window_frames_of(obj))

    def write_window(self, asset_key: dg.AssetKey, partition_key: str, run_id: str, frame: pl.DataFrame) -> Path:
        """Publish one window's frame of a run whole: written under a unique temporary name, then renamed."""
        return _publish(
            self._path(asset_key, partition_key, run_id), lambda tmp: frame.write_ipc(tmp, compression="uncompressed")
        )

    def write_windows(self, asset_key: dg.AssetKey, run_id: str, frames: WindowFrames) -> Path:
        """Publish a run's windows: their shared rows once, then the layout naming each window's slices; the rows file."""
        name = f"{run_id}.{uuid.uuid4().hex}"
        folder = self._shared_dir(asset_key)
        rows = pl.concat(frames.blocks, rechunk=False) if frames.blocks else frames.empty
        layout = {"blocks": [len(b) for b in frames.blocks], "by_instrument": frames.by_instrument,
                  "windows": {key: [list(p) for p in parts] for key, parts in frames.slices.items()}}
        # The rows first, then the layout: a layout never names a missing file.
        shared = _publish(folder / f"{name}{_FRAME}", lambda tmp: rows.write_ipc(tmp, compression="uncompressed"))
        _publish(folder / f"{name}{_LAYOUT}", lambda tmp: tmp.write_text(json.dumps(layout)))
        return shared

    def load_input(self, context: dg.InputContext) -> Mapping[str, pl.DataFrame]:
        upstream = context.upstream_output
        # The run that produced the input: this run, or in a re-execution the run re-executed. For an
        # input materialised by an unrelated run, Dagster names this run, and the newest frame is read.
        runs = [upstream.run_id] if upstream is not None else []
        keys = list(context.asset_partition_keys)
        layouts: dict[str | None, list[tuple[str, dict]]] = {}
        if len(keys) > 1:
            for run_id in runs:
                layouts[run_id] = self._layouts(context.asset_key, run_id)
                for name, layout in layouts[run_id]:
                    windows = layout["windows"]
                    if isinstance(windows, dict) and all(key in windows for key in keys):
                        blocks, empty, by_instrument = self._blocks(context.asset_key, name, layout)
                        return WindowFrames(blocks, {key: windows[key] for key in keys}, empty, by_instrument)
        found = {key: self._locate(context.asset_key, key, runs, layouts) for key in keys}
        files = {p["file"] for p in found.values() if isinstance(p, dict)}
        if len(keys) > 1 and len(files) == 1 and all(isinstance(p, dict) for p in found.values()):
            blocks, empty, by_instrument = self._blocks(context.asset_key, files.pop())
            return WindowFrames(blocks, {key: found[key]["slices"] for key in keys}, empty, by_instrument)
        return {key: self._read(context.asset_key, key, where) for key, where in found.items()}

    def load_window(self, asset_key: dg.AssetKey, partition_key: str, run_ids: Iterable[str] = ()) -> pl.DataFrame:
        """One window's frame of ``asset_key``: that of the first of ``run_ids`` that has one, else the newest.

        Raises FileNotFoundError when the window has no frame: never materialised, or released
        once its rows were committed (materialise the chain from its first asset again).
        """
        return self._read(asset_key, partition_key, self._locate(asset_key, partition_key, run_ids))

    def _locate(
        self, asset_key: dg.AssetKey, partition_key: str, run_ids: Iterable[str],
        layouts: dict[str | None, list[tuple[str, dict]]] | None = None,
    ) -> Path | dict:
        """Where the window's frame is: a whole file, or ``{"file", "slices"}`` in a shared one.

        ``layouts`` keeps the shared files' layouts read, by run, across the windows of one input.
        """
        layouts = {} if layouts is None else layouts

        def layouts_of(run_id: str | None) -> list[tuple[str, dict]]:
            if run_id not in layouts:
                layouts[run_id] = self._layouts(asset_key, run_id)
            return layouts[run_id]

        for run_id in run_ids:
            for path in (self._path(asset_key, partition_key, run_id), self._pointer_path(asset_key, partition_key, run_id)):
                where = _located(path)
                if where is not None:
                    return where
            for name, layout in layouts_of(run_id):
                if isinstance(layout["windows"], dict) and partition_key in layout["windows"]:
                    return {"file": name, "slices": layout["windows"][partition_key]}
        folder = self._window_dir(asset_key, partition_key)
        found = [*folder.glob(f"*{_FRAME}"), *folder.glob(f"*{_SLICES}")] if folder.is_dir() else []
        shared = self._shared_dir(asset_key)
        found += [shared / f"{name}{_LAYOUT}" for name, layout in layouts_of(None)
                  if isinstance(layout["windows"], dict) and partition_key in layout["windows"]]
        for path in sorted(found, key=_mtime, reverse=True) + [p for p in self._legacy_paths(asset_key, partition_key)]:
            where = _located(path) if path.parent != shared else _in_layout(path, partition_key)
            if where is not None:
                return where
        raise FileNotFoundError(
            f"{asset_key.to_user_string()} has no frame for window {partition_key} in {folder}: it was never "
            "materialised there, or its frames were deleted once the window's rows were committed. Materialise "
            "the window's chain from its first asset."
        )

    def _layouts(self, asset_key: dg.AssetKey, run_id: str | None = None) -> list[tuple[str, dict]]:
        """The shared files' layouts, of ``run_id`` (else of every run), newest first: (name, layout)."""
        folder = self._shared_dir(asset_key)
        if not folder.is_dir():
            return []
        paths = [p for p in folder.glob(f"{run_id}.*{_LAYOUT}" if run_id else f"*{_LAYOUT}") if not p.name.startswith(".")]
        found = []
        for path in sorted(paths, key=_mtime, reverse=True):
            try:
                found.append((path.name.removesuffix(_LAYOUT), json.loads(path.read_text())))
            except FileNotFoundError:
                continue  # released meanwhile
        return found

    def _read(self, asset_key: dg.AssetKey, partition_key: str, where: Path | dict) -> pl.DataFrame:
        if isinstance(where, dict):
            blocks, empty, _by_instrument = self._blocks(asset_key, where["file"])
            return WindowFrames(blocks, {partition_key: where["slices"]}, empty)[partition_key]
        return pl.read_ipc(where) if where.suffix == _FRAME else pl.read_parquet(where)

    def _blocks(
        self, asset_key: dg.AssetKey, name: str, layout: dict | None = None
    ) -> tuple[list[pl.DataFrame], pl.DataFrame, bool]:
        """A shared file's blocks, an empty frame of their schema, and whether each holds one instrument."""
        folder = self._shared_dir(asset_key)
        rows = pl.read_ipc(folder / f"{name}{_FRAME}")
        if layout is None:
            layout = json.loads((folder / f"{name}{_LAYOUT}").read_text())
        blocks, start = [], 0
        for length in layout["blocks"]:
            blocks.append(rows.slice(start, length))
            start += length
        return blocks, rows.clear(), layout["by_instrument"]

    def release(self, asset_keys: Iterable[dg.AssetKey], partition_keys: Iterable[str], run_ids: Iterable[str]) -> int:
        """Delete these windows' frames written by ``run_ids`` (a run and the runs it re-executes): whole
        files, and the windows' slices of shared files, each file once its layout holds no window; and
        frames of the layouts before. The number of files deleted.

        Another run's frames of the same windows are left alone: that run may still be reading them.
        """
        runs = {r for r in run_ids if r}
        keys = list(partition_keys)
        deleted = 0
        for asset_key in asset_keys:
            # Only the windows with a folder or a legacy file are visited: a backfill run's windows have neither.
            asset_dir = Path(self.base_dir, *asset_key.path)
            try:
                present = set(os.listdir(asset_dir))
            except FileNotFoundError:
                present = set()
            for key in keys:
                folder = self._window_dir(asset_key, key)
                if folder.name in present:
                    paths = [self._path(asset_key, key, r) for r in runs] + [self._pointer_path(asset_key, key, r) for r in runs]
                    deleted += sum(_unlink(path) for path in paths)
                    _remove_if_empty(folder)
                deleted += sum(_unlink(path) for path in self._legacy_paths(asset_key, key) if path.name in present)
            deleted += self._release_shared(asset_key, runs, set(keys))
        return deleted

    def _release_shared(self, asset_key: dg.AssetKey, runs: set[str], keys: set[str]) -> int:
        folder = self._shared_dir(asset_key)
        deleted = 0
        for run_id in runs:
            for name, layout in self._layouts(asset_key, run_id):
                windows = layout["windows"]
                if isinstance(windows, dict):
                    left = {w: parts for w, parts in windows.items() if w not in keys}
                    if left and len(left) < len(windows):
                        # The windows not released keep their slices (a write step that released only some).
                        _publish(folder / f"{name}{_LAYOUT}", lambda tmp, s=json.dumps(layout | {"windows": left}): tmp.write_text(s))
                    if left:
                        continue
                elif any(self._pointer_path(asset_key, w, run_id).exists() for w in windows):
                    continue
                deleted += _unlink(folder / f"{name}{_FRAME}") + _unlink(folder / f"{name}{_LAYOUT}")
        _remove_if_empty(folder)
        return deleted

    def sweep(self, now: float | None = None) -> int:
        """Delete every frame file (and abandoned temporary file) older than ``retention_days``; the number deleted."""
        root = Path(self.base_dir)
        if not root.is_dir():
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        deleted = 0
        for folder, _subdirs, files in os.walk(root, topdown=False):
            for name in files:
                path = Path(folder, name)
                if name.endswith((_FRAME, _TEMPORARY, ".parquet", _LAYOUT)) and _mtime(path) < cutoff:
                    deleted += _unlink(path)
            if Path(folder) != root:
                _remove_if_empty(Path(folder))
        if deleted:
            logger.info("deleted %d frame files older than %d days under %s", deleted, self.retention_days, root)
        return deleted


def _publish(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` a file under a unique temporary name beside ``path``, then rename it into place (atomic)."""
    # Unique per writer: a retry or a second process writing the same file never shares its temporary.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TEMPORARY}")
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            os.replace(tmp, path)  # readers see the old file or the new one, never a part
            return path
        except FileNotFoundError:
            # Another run's release or sweep removed the folder, empty a moment ago: make it again.
            if attempt == 2:
                raise
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _located(path: Path) -> Path | dict | None:
    """A whole frame file, or a pointer file's contents, when ``path`` exists (None when it does not)."""
    if not path.name.endswith(_SLICES):
        return path if path.exists() else None
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _in_layout(path: Path, partition_key: str) -> dict | None:
    """The window's ``{"file", "slices"}`` in the shared file whose layout is ``path`` (None once released)."""
    try:
        windows = json.loads(path.read_text())["windows"]
    except FileNotFoundError:
        return None
    if partition_key not in windows:
        return None
    return {"file": path.name.removesuffix(_LAYOUT), "slices": windows[partition_key]}


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
