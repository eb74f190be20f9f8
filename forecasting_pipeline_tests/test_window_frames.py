"""A backfill run's windows share their bars once, and each window is still exactly what a run of it alone gets.

Real hourly EUR/USD and daily GOOG bars (backtesting's), with faults planted in them so that some
windows are repaired by validation (a duplicated bar, a bar with a bad price) and some have gaps.
Each window of a range read at once is held against the same window read alone: its bars,
findings, covariates, model inputs, and the frame the IO manager stores and reads back.
"""

import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from forecasting_pipeline.forecasting.batch_wire import WireError, decode_inputs, decode_npz, encode_inputs, encode_npz
from forecasting_pipeline.forecasting.inputs import usable_model_inputs, window_model_inputs
from forecasting_pipeline.market.cadences import CADENCES
from forecasting_pipeline.market.features import engineer_covariates, window_covariates
from forecasting_pipeline.market.instruments import Instrument
from forecasting_pipeline.market.sources import FileSource
from forecasting_pipeline.market.validation import ValidationConfig
from forecasting_pipeline.market.window_bars import read_window_bars
from forecasting_pipeline.market.window_frames import WindowFrames
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
from forecasting_pipeline.orchestration.partitions import cadence_windows

CONTEXT = {"1h": 512, "1d": 256}
# A window range per cadence: 60 hourly windows over a weekend, 20 daily windows.
RANGES = {"1h": ("2017-12-08-10:00", "2017-12-10-21:00"), "1d": ("2012-11-05", "2012-11-24")}
INSTRUMENTS = {"1h": Instrument("EURUSD", "fx", "24/5"), "1d": Instrument("GOOG", "equity", "XNAS")}
NAME = {"1h": "EURUSD", "1d": "GOOG"}


def _faulty(bars: pl.DataFrame, first_end, later: int) -> pl.DataFrame:
    """The real bars with, inside the range's contexts: a missing stretch before the first window's end,
    then ``later`` bars after it a bar repeated (repaired), and twice as late a negative close (excluded)."""
    i = bars["ts"].search_sorted(first_end, side="right") - 1
    ts = bars["ts"]
    duplicate = bars.slice(i + later, 1)
    out = pl.concat([bars, duplicate]).sort("ts", maintain_order=True)
    out = out.with_columns(pl.when(pl.col("ts") == ts[i + 2 * later]).then(-1.0).otherwise(pl.col("close")).alias("close"))
    return out.filter(~pl.col("ts").is_between(ts[i - 60], ts[i - 50], closed="none"))


@pytest.fixture(params=["1h", "1d"])
def faulty_source(request, real_bars, bar_files):
    """A cadence and a files source of its real bars with faults planted in the range's contexts."""
    cadence = request.param
    first_end = min(_ends(cadence).values())
    faulty = _faulty(real_bars(NAME[cadence]), first_end, 3 if cadence == "1h" else 4)
    bar_files.write(INSTRUMENTS[cadence].symbol, faulty, cadence=cadence)
    return cadence, FileSource(str(bar_files.root))


@pytest.fixture(params=[("1h", False), ("1h", True), ("1d", True)], ids=["1h-clean", "1h-faulty", "1d-faulty"])
def some_source(request, real_bars, bar_files):
    """As ``faulty_source``, and also the hourly bars as they are."""
    cadence, faulty = request.param
    bars = real_bars(NAME[cadence])
    if faulty:
        bars = _faulty(bars, min(_ends(cadence).values()), 3 if cadence == "1h" else 4)
    bar_files.write(INSTRUMENTS[cadence].symbol, bars, cadence=cadence)
    return cadence, FileSource(str(bar_files.root)), faulty


def _ends(cadence: str) -> dict:
    windows = cadence_windows(CADENCES[cadence], "2004-01-01" if cadence == "1d" else "2017-01-01-00:00")
    keys = windows.partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(*RANGES[cadence]))
    return windows.ends(keys)


def test_when_a_range_of_windows_is_read_at_once_then_each_window_equals_its_own_read_alone(faulty_source):
    cadence, source = faulty_source
    universe, ends = [INSTRUMENTS[cadence]], _ends(cadence)

    together = read_window_bars(source, universe, cadence, ends, CONTEXT[cadence], ValidationConfig())
    alone = {w: read_window_bars(source, universe, cadence, {w: e}, CONTEXT[cadence], ValidationConfig()) for w, e in ends.items()}

    assert isinstance(together.bars, WindowFrames) and together.bars.by_instrument
    for window in ends:
        assert together.bars[window].equals(alone[window].bars[window]), window
        mine, own = together.windows[window], alone[window].windows[window]
        assert (mine.findings, mine.excluded, mine.kept) == (own.findings, own.excluded, own.kept), window
    assert together.findings.equals(pl.concat([alone[w].findings for w in ends]).sort(
        pl.col("action") != "excluded", "window", "symbol", maintain_order=True))
    assert {"duplicate_ts", "calendar_gap", "non_positive_price"} <= set(together.findings["rule"])
    assert len(together.bars.blocks) > 1 and together.excluded
    # A clean window is rows of the instrument's history, held once; a repaired one is a block of its own.
    repaired = {together.bars.slices[w][0] for w, v in together.windows.items()
                if v.kept and any(f.action == "repaired" for f in v.findings)}
    assert together.bars.slices[min(ends)][0][0] == 0
    assert len(together.bars.blocks) == 1 + len(repaired) and repaired


def test_when_a_spike_lies_in_some_windows_of_a_range_then_each_reports_its_jumps_as_read_alone(real_bars, bar_files):
    cadence, universe, ends = "1h", [INSTRUMENTS["1h"]], _ends("1h")
    bars = real_bars(NAME[cadence])
    first = bars["ts"].search_sorted(min(ends.values()), side="right") - 1
    spike = first - CONTEXT[cadence] + 3  # in the contexts of the range's first windows only
    bars = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == spike).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close")
    )
    bar_files.write(NAME[cadence], bars, cadence=cadence)
    source = FileSource(str(bar_files.root))

    together = read_window_bars(source, universe, cadence, ends, CONTEXT[cadence], ValidationConfig())

    jumped = {w for w, v in together.windows.items() if any(f.rule == "jump" for f in v.findings)}
    assert jumped and jumped != set(ends)
    for window, end in ends.items():
        own = read_window_bars(source, universe, cadence, {window: end}, CONTEXT[cadence], ValidationConfig())
        assert together.windows[window].findings == own.windows[window].findings, window


def test_when_covariates_and_model_inputs_are_built_once_per_block_then_each_window_gets_its_own(some_source):
    cadence, source, faulty = some_source
    bars = read_window_bars(source, [INSTRUMENTS[cadence]], cadence, _ends(cadence), CONTEXT[cadence], ValidationConfig()).bars

    covariates = window_covariates(bars)
    keys, inputs, rejected = window_model_inputs(covariates, CONTEXT[cadence] // 2)

    expected_keys, expected_inputs = [], []
    for window, frame in bars.items():
        assert covariates[window].equals(engineer_covariates(frame)), window
        k, x, r = usable_model_inputs(engineer_covariates(frame), window, CONTEXT[cadence] // 2)
        expected_keys += k
        expected_inputs += x
        assert r == [x for x in rejected if x.window == window]
    assert keys == expected_keys
    for got, want in zip(inputs, expected_inputs, strict=True):
        np.testing.assert_array_equal(got["target"], want["target"])
        np.testing.assert_array_equal(got["past_covariates"]["volume"], want["past_covariates"]["volume"])
    # Windows that end between two bars (the weekend's) hold the same context: one input object for all of them.
    assert len({id(x) for x in inputs}) == len({(k.symbol, k.as_of) for k in keys})
    if not faulty:
        assert len({id(x) for x in inputs}) < len(inputs) / 2


def test_when_a_ranges_inputs_go_to_the_service_then_each_block_is_sent_once_and_every_series_arrives_whole(some_source):
    cadence, source, faulty = some_source
    bars = read_window_bars(source, [INSTRUMENTS[cadence]], cadence, _ends(cadence), CONTEXT[cadence], ValidationConfig()).bars
    _keys, inputs, _rejected = window_model_inputs(window_covariates(bars), CONTEXT[cadence])

    names, arrays = encode_inputs(inputs)
    header, received = decode_npz(encode_npz({"covariates": names}, arrays))
    arrived = decode_inputs(header["covariates"], received)

    for got, sent in zip(arrived, inputs, strict=True):
        np.testing.assert_array_equal(got["target"], sent["target"])
        for name in sent["past_covariates"]:
            np.testing.assert_array_equal(got["past_covariates"][name], sent["past_covariates"][name])
    # The windows' contexts are views of their blocks' rows: the body holds those rows, not a copy per window.
    assert len(arrays["target"]) <= sum(len(b) for b in bars.blocks)
    if not faulty:
        assert len(arrays["target"]) < sum(len(x["target"]) for x in inputs) / 4


def test_when_a_body_places_a_series_outside_its_values_then_it_is_refused_naming_the_variate():
    arrays = {"lengths": np.array([3, 3]), "target": np.arange(4.0), "target_starts": np.array([0, 2])}

    with pytest.raises(WireError, match=r"target_starts places a series outside the 4 values of target"):
        decode_inputs([], arrays)


def test_when_a_range_is_stored_and_read_back_then_each_window_and_the_whole_range_are_what_was_stored(
    faulty_source, tmp_path
):
    cadence, source = faulty_source
    ends = _ends(cadence)
    bars = read_window_bars(source, [INSTRUMENTS[cadence]], cadence, ends, CONTEXT[cadence], ValidationConfig()).bars
    windows = cadence_windows(CADENCES[cadence], "2004-01-01" if cadence == "1d" else "2017-01-01-00:00")
    frames = PartitionedFramesIOManager(base_dir=str(tmp_path / "frames"))
    asset = dg.AssetKey("ohlcv_test")
    span = dg.PartitionKeyRange(*RANGES[cadence])

    output = dg.build_output_context(asset_key=asset, asset_partitions_def=windows.partitions_def,
                                     asset_partition_key_range=span, run_id="run-a")
    frames.handle_output(output, bars)
    loaded = frames.load_input(dg.build_input_context(asset_key=asset, asset_partitions_def=windows.partitions_def,
                                                      asset_partition_key_range=span, upstream_output=output))
    files = sorted(p.name for p in (tmp_path / "frames" / "ohlcv_test").rglob("*") if p.is_file())

    assert isinstance(loaded, WindowFrames) and loaded.by_instrument
    for window in ends:
        assert loaded[window].equals(bars[window]), window
        assert frames.load_window(asset, window, ["run-a"]).equals(bars[window]), window
    # The shared rows once, and their layout: no file per window.
    assert [f.rsplit(".", 1)[1] for f in files] == ["arrow", "json"]
    # Releasing some windows keeps the others readable; once the write step has committed them all,
    # the run's shared rows and layout go.
    first, *rest = list(ends)
    assert frames.release([asset], [first], ["run-a"]) == 0
    with pytest.raises(FileNotFoundError, match="its frames were deleted"):
        frames.load_window(asset, first, ["run-a"])
    assert frames.load_window(asset, rest[0], ["run-a"]).equals(bars[rest[0]])
    assert frames.release([asset], rest, ["run-a"]) == 2
    assert list((tmp_path / "frames" / "ohlcv_test").iterdir()) == []


def test_when_a_range_was_stored_with_a_pointer_per_window_then_it_is_still_read_and_released(tmp_path):
    frames = PartitionedFramesIOManager(base_dir=str(tmp_path / "frames"))
    windows = cadence_windows(CADENCES["1d"])
    asset = dg.AssetKey("covariates_test")
    keys = ["2025-06-02", "2025-06-03"]
    rows = pl.DataFrame({"symbol": ["A", "A", "A"], "x": [1.0, 2.0, 3.0]})
    # The layout before: the layout lists the windows, and each window's folder holds a pointer.
    shared = tmp_path / "frames" / "covariates_test" / "_shared"
    shared.mkdir(parents=True)
    rows.write_ipc(shared / "backfill.0a.arrow")
    (shared / "backfill.0a.json").write_text(json.dumps({"blocks": [3], "by_instrument": True, "windows": keys}))
    for i, key in enumerate(keys):
        folder = tmp_path / "frames" / "covariates_test" / key
        folder.mkdir()
        (folder / "backfill.rows.json").write_text(json.dumps({"file": "backfill.0a", "slices": [[0, i, 2]]}))
    output = dg.build_output_context(asset_key=asset, asset_partitions_def=windows.partitions_def,
                                     asset_partition_key_range=dg.PartitionKeyRange(*keys), run_id="backfill")

    loaded = frames.load_input(dg.build_input_context(asset_key=asset, asset_partitions_def=windows.partitions_def,
                                                      asset_partition_key_range=dg.PartitionKeyRange(*keys),
                                                      upstream_output=output))

    assert isinstance(loaded, WindowFrames)
    assert [loaded[k]["x"].to_list() for k in keys] == [[1.0, 2.0], [2.0, 3.0]]
    assert frames.release([asset], keys, ["backfill"]) == 4
    assert list((tmp_path / "frames" / "covariates_test").iterdir()) == []


def test_when_one_window_is_rewritten_by_another_run_after_a_range_then_each_run_reads_its_own_frame(tmp_path):
    frames = PartitionedFramesIOManager(base_dir=str(tmp_path / "frames"))
    windows = cadence_windows(CADENCES["1d"])
    asset = dg.AssetKey("covariates_test")
    keys = ["2025-06-02", "2025-06-03"]
    shared = {k: pl.DataFrame({"symbol": ["A", "A"], "x": [float(i), i + 1.0]}) for i, k in enumerate(keys)}
    frames.handle_output(dg.build_output_context(asset_key=asset, asset_partitions_def=windows.partitions_def,
                                                 asset_partition_key_range=dg.PartitionKeyRange(*keys),
                                                 run_id="backfill"), shared)
    alone = pl.DataFrame({"symbol": ["A"], "x": [9.0]})

    frames.handle_output(dg.build_output_context(asset_key=asset, asset_partitions_def=windows.partitions_def,
                                                 partition_key=keys[0], run_id="rerun"), {keys[0]: alone})

    assert frames.load_window(asset, keys[0], ["rerun"]).equals(alone)
    assert frames.load_window(asset, keys[0], ["backfill"]).equals(shared[keys[0]])
    assert frames.load_window(asset, keys[1], ["rerun"]).equals(shared[keys[1]])  # the newest it has
    # The re-run's write step releases its own frame only; the range's shared rows stay for its windows.
    assert frames.release([asset], [keys[0]], ["rerun"]) == 1
    assert frames.load_window(asset, keys[0], ["backfill"]).equals(shared[keys[0]])
