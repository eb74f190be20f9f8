"""Frames between the chain's steps: whole files under racing writers, and their retention, on real runs."""

import os
import threading
import time

import dagster as dg
import polars as pl
import pytest

from forecasting_pipeline.cli import main
from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER, build_chain
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
from forecasting_pipeline.orchestration.resources import InstrumentsResource
from forecasting_pipeline_tests.conftest import DAILY_WINDOWS, SYMBOLS

WINDOW = "2025-06-02"
ASSET = dg.AssetKey("ohlcv_1d")
ROWS = 400_000


def frames_under(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("runs", [("run-a", "run-b"), ("run-a", "run-a")], ids=["two runs", "one run's retries"])
def test_when_two_writers_store_one_window_at_once_then_every_read_sees_a_whole_frame_and_no_temporary_is_left(
    tmp_path, runs
):
    frames = PartitionedFramesIOManager(base_dir=str(tmp_path))
    seen, errors, done = [], [], threading.Event()

    def write(run: str, writer: int) -> None:
        frame = pl.DataFrame({"writer": [writer] * ROWS})
        try:
            for _ in range(8):
                frames.write_window(ASSET, WINDOW, run, frame)
        except Exception as exc:  # noqa: BLE001 - any failure of a writer fails the test below
            errors.append(exc)

    def read() -> None:
        while not done.is_set():
            try:
                frame = frames.load_window(ASSET, WINDOW, [runs[0]])
            except FileNotFoundError:
                continue  # before the first publish
            seen.append((frame.height, frame["writer"].n_unique()))

    writers = [threading.Thread(target=write, args=(run, i)) for i, run in enumerate(runs)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()

    assert errors == []
    assert seen and set(seen) == {(ROWS, 1)}
    # Each run reads back its own frame; one run's two writers leave one of their two whole frames.
    for run in set(runs):
        assert frames.load_window(ASSET, WINDOW, [run])["writer"].unique().to_list() in ([0], [1])
    if runs[0] != runs[1]:
        assert frames.load_window(ASSET, WINDOW, ["run-b"])["writer"].unique().to_list() == [1]
    assert frames_under(tmp_path) == sorted(f"ohlcv_1d/{WINDOW}/{run}.arrow" for run in set(runs))


def test_when_a_window_is_written_then_its_frames_are_deleted_and_only_stale_leftovers_of_other_runs_go(
    resources, instance, tmp_path
):
    frames_root = tmp_path / "frames"
    frames = PartitionedFramesIOManager(base_dir=str(frames_root), retention_days=7)
    # Leftovers of earlier runs that failed before writing: one older than the retention, one recent.
    stale = frames.write_window(dg.AssetKey("covariates_1d"), "2025-05-01", "failed-long-ago", pl.DataFrame({"x": [1]}))
    recent = frames.write_window(dg.AssetKey("covariates_1d"), "2025-06-01", "failed-yesterday", pl.DataFrame({"x": [1]}))
    eight_days_ago = time.time() - 8 * 86400
    os.utime(stale, (eight_days_ago, eight_days_ago))

    result = dg.materialize(
        build_chain(DAILY_WINDOWS, SYMBOLS), partition_key=WINDOW, instance=instance,
        resources={**resources, "instruments": InstrumentsResource(symbols=["AAPL", "BTC-USD"]),
                   FRAMES_IO_MANAGER: frames},
    )

    assert result.success
    assert result.asset_materializations_for_node("ml_predictions_1d")[0].metadata["forecast_fan_window"]
    assert frames_under(frames_root) == ["covariates_1d/2025-06-01/failed-yesterday.arrow"]
    assert recent.exists() and not stale.exists()


def test_when_frames_were_written_in_the_layout_before_then_they_are_still_read(tmp_path):
    frames = PartitionedFramesIOManager(base_dir=str(tmp_path))
    old = tmp_path / "ohlcv_1d" / "2025-06-02.parquet"
    old.parent.mkdir(parents=True)
    pl.DataFrame({"x": [1, 2]}).write_parquet(old)

    assert frames.load_window(ASSET, WINDOW, ["any-run"])["x"].to_list() == [1, 2]
    assert frames.release([ASSET], [WINDOW], ["any-run"]) == 1
    with pytest.raises(FileNotFoundError, match="its frames were deleted once the window's rows were committed"):
        frames.load_window(ASSET, WINDOW, ["any-run"])


def test_when_frames_are_pruned_then_those_older_than_the_retention_setting_go_and_the_rest_stay(
    tmp_path, monkeypatch, capsys
):
    frames = PartitionedFramesIOManager(base_dir=str(tmp_path))
    old = frames.write_window(ASSET, "2025-05-01", "failed-run", pl.DataFrame({"x": [1]}))
    young = frames.write_window(ASSET, "2025-06-01", "failed-run", pl.DataFrame({"x": [1]}))
    abandoned = old.with_name(".failed-run.arrow.0123.tmp")
    abandoned.write_bytes(b"half a frame")
    four_days_ago = time.time() - 4 * 86400
    for path in (old, abandoned):
        os.utime(path, (four_days_ago, four_days_ago))
    monkeypatch.setenv("FRAMES_DIR", str(tmp_path))
    monkeypatch.setenv("FRAMES_RETENTION_DAYS", "3")

    assert main(["frames", "prune"]) == 0

    assert frames_under(tmp_path) == ["ohlcv_1d/2025-06-01/failed-run.arrow"] and young.exists()
    assert f"deleted 2 frame files older than 3 days under {tmp_path}" in capsys.readouterr().out
