"""Fine-tuning, the registry, shadow forecasts and promotion, on real bars with the tiny checkpoint.

The bars are real: daily GOOG (2004-2013) as the `backtesting` package ships it, through the
`files` source. The configured model is the random-weight tiny checkpoint (the "random start").
Nothing here fakes the comparison: every forecast is the real pipeline's, the scoring run scores
them against the realised closes, and the promotion test reads what it stored.
"""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import psycopg
import pytest

from forecasting_pipeline import cli
from forecasting_pipeline.forecasting.champion import champion_runner
from forecasting_pipeline.forecasting.finetune import TrainingParams, store_checkpoint, training_split
from forecasting_pipeline.forecasting.model import ModelUnavailableError, checkpoint_digest, load_chronos2
from forecasting_pipeline.forecasting.predict import predict_quantiles
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.market.cadences import DAILY, HOURLY
from forecasting_pipeline.market.features import engineer_covariates
from forecasting_pipeline.market.instruments import load_instruments
from forecasting_pipeline.market.sources import FileSource
from forecasting_pipeline.orchestration.chain import FRAMES_IO_MANAGER, build_chain
from forecasting_pipeline.orchestration.finetune_assets import (
    PROMOTION_CHECK,
    challenger_forecasts_asset,
    finetuned_asset,
    registry_asset,
)
from forecasting_pipeline.orchestration.io_manager import PartitionedFramesIOManager
from forecasting_pipeline.orchestration.partitions import cadence_windows
from forecasting_pipeline.orchestration.resources import (
    Chronos2Resource,
    InstrumentsResource,
    MarketDataResource,
    ModelRegistryResource,
    PostgresResource,
)
from forecasting_pipeline.scoring.evaluation import score_new_forecasts
from forecasting_pipeline.serving.gateway import latest_forecast
from forecasting_pipeline.serving.model_catalog import Catalog, model_catalog
from forecasting_pipeline.serving.track_record import PastForecasts, past_forecasts
from forecasting_pipeline.settings import Settings, chronos2_runner
from forecasting_pipeline.storage import model_registry as registry
from forecasting_pipeline.storage.ml_predictions import read_predictions

WINDOWS = cadence_windows(DAILY, "2004-01-01", 400)
CUTOFF_PARTITION = "2012-05-01"  # trains on bars closed before 2012-06-01 00:00 UTC
CUTOFF = datetime(2012, 6, 1, tzinfo=timezone.utc)
SHADOW_RANGE = ("2012-06-01", "2012-11-30")
SCORED_UNTIL = datetime(2013, 3, 2, tzinfo=timezone.utc)
NEXT_WINDOWS = ["2013-02-04", "2013-02-05", "2013-02-06"]
MIN_FORECASTS = 100
CONTEXT = 256
TRAINING = {"mode": "full", "steps": 60, "learning_rate": 1e-2, "batch_size": 32, "context_length": CONTEXT,
            "history_bars": 2048}
CHAIN_CONFIG = {"ops": {"ohlcv_1d": {"config": {"history_bars": CONTEXT}},
                        "chronos2_forecasts_1d": {"config": {"context_length": CONTEXT}}}}
SHADOW_CONFIG = {"ops": {**CHAIN_CONFIG["ops"], "chronos2_challenger_forecasts_1d": {"config": {"context_length": CONTEXT}}}}
REPO = Path(__file__).resolve().parents[1]
UNIVERSE = "instruments:\n  - {symbol: GOOG, asset_class: equity, calendar: XNAS}\n"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model on one torch thread: with the other core busy, two threads spend most of their time waiting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def goog_resources(root: Path, database_url: str, checkpoint: Path) -> dict[str, object]:
    """The real resources on GOOG's bar file under ``root``, the registry in ``database_url``, ``checkpoint`` configured."""
    (root / "instruments.yaml").write_text(UNIVERSE)
    return {
        "database": PostgresResource(url=database_url),
        "instruments": InstrumentsResource(file=str(root / "instruments.yaml")),
        "market_data": MarketDataResource(source="files", path=str(root / "bars")),
        "chronos2": Chronos2Resource(model=str(checkpoint), device="cpu", registry_database_url=database_url),
        "model_registry": ModelRegistryResource(directory=str(root / "models"), min_forecasts=MIN_FORECASTS),
        FRAMES_IO_MANAGER: PartitionedFramesIOManager(base_dir=str(root / "frames")),
    }


def write_goog(root: Path, bars: pl.DataFrame) -> None:
    (root / "bars" / "1d").mkdir(parents=True, exist_ok=True)
    bars.drop("symbol").write_parquet(root / "bars" / "1d" / "GOOG.parquet")


def fine_tune_run(resources, instance, config: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize([finetuned_asset(WINDOWS)], partition_key=CUTOFF_PARTITION, resources=resources,
                          instance=instance, run_config={"ops": {"chronos2_finetuned_1d": {"config": config}}})


def range_run(assets, resources, instance, first: str, last: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, resources=resources, instance=instance, run_config=SHADOW_CONFIG, tags={
        "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})


def models_cli(database_url: str, *args: str) -> tuple[int, str]:
    """``forecasting-pipeline models ...`` in this process: exit status and what it printed (stdout + stderr)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        env.setenv("DATABASE_URL", database_url)
        env.setenv("PROMOTION_MIN_FORECASTS", str(MIN_FORECASTS))
        status = cli.main(["models", *args])
    return status, out.getvalue()


def perturbed_copy(checkpoint: registry.Checkpoint, folder: Path, scale: float = 0.3) -> registry.NewCheckpoint:
    """The checkpoint's weights plus Gaussian noise of ``scale`` times each tensor's spread: worse on purpose."""
    from safetensors.torch import load_file, save_file

    staged = folder / "staged"
    staged.mkdir(parents=True)
    shutil.copy(Path(checkpoint.path) / "config.json", staged / "config.json")
    generator = np.random.default_rng(1)
    weights = load_file(Path(checkpoint.path) / "model.safetensors")
    noisy = {name: tensor + scale * float(tensor.float().std().nan_to_num()) *
             tensor.new_tensor(generator.standard_normal(tuple(tensor.shape)))
             for name, tensor in weights.items()}
    save_file(noisy, staged / "model.safetensors")
    path = store_checkpoint(staged, folder / "models", "1d")
    loaded = load_chronos2(str(path))
    base = {f.name: getattr(checkpoint, f.name) for f in fields(registry.NewCheckpoint)}
    return registry.NewCheckpoint(**{**base, "content_hash": checkpoint_digest(path),
                                     "model_version": loaded.version, "path": str(path)})


def chronos2_versions(conn, window: str) -> set[str]:
    end = WINDOWS.end_of(window)
    rows = read_predictions(conn, "1d", "chronos-2", as_of_from=end - timedelta(days=1), as_of_to=end)
    return set(rows["model_version"].to_list())


# ---------------------------------------------------------------------------
# Training data: point-in-time, with a held-out end
# ---------------------------------------------------------------------------


def test_when_bars_are_split_for_training_then_nothing_at_or_after_the_cutoff_is_read_and_the_end_is_held_out(real_bars):
    covariates = engineer_covariates(real_bars("GOOG"))
    before = covariates.filter(pl.col("ts") < CUTOFF).height
    params = TrainingParams(horizon=10, validation_windows=4, context_length=CONTEXT)

    split = training_split(covariates, CUTOFF, params)

    assert split.symbols == ["GOOG"] and split.last_bar < CUTOFF <= covariates["ts"].max()
    assert split.bars == before
    assert [len(s["target"]) for s in split.train] == [before - 40]
    # Four validation windows, each ending 10 bars later; the last ends with the last bar before the cutoff.
    assert [len(s["target"]) for s in split.validation] == [before - 30, before - 20, before - 10, before]
    assert split.validation[-1]["target"][-1] == np.float32(covariates.filter(pl.col("ts") < CUTOFF)["close"][-1])


def test_when_future_bars_reach_the_source_then_a_rerun_cutoff_trains_the_identical_checkpoint(
    real_bars, tiny_checkpoint, database_url, conn, tmp_path, instance
):
    bars = real_bars("GOOG")
    resources = goog_resources(tmp_path, database_url, tiny_checkpoint)
    lora = {"steps": 10, "learning_rate": 1e-3, "batch_size": 16, "context_length": 128, "history_bars": 1024}
    write_goog(tmp_path, bars.filter(pl.col("ts") < CUTOFF))
    first = fine_tune_run(resources, instance, lora)
    write_goog(tmp_path, bars)  # nine months of bars after the cutoff arrive
    second = fine_tune_run(resources, instance, lora)

    [made] = first.asset_materializations_for_node("chronos2_finetuned_1d")
    [again] = second.asset_materializations_for_node("chronos2_finetuned_1d")
    assert again.metadata["content_hash"] == made.metadata["content_hash"]
    [stored] = registry.checkpoints(conn, "1d")
    assert (stored.id, stored.status, stored.finetune_mode) == (made.metadata["checkpoint_id"].value, "challenger", "lora")
    assert stored.training_to == CUTOFF and stored.training_from == bars.filter(pl.col("ts") < CUTOFF)["ts"][-1024]
    assert (stored.steps, stored.learning_rate, stored.seed, stored.validation_bars) == (10, 1e-3, 0, 40)
    assert stored.validation_loss is not None and stored.instruments == ["GOOG"]
    # The merged checkpoint loads with the safe loader and forecasts.
    loaded = load_chronos2(stored.path)
    assert loaded.version == stored.model_version and loaded.revision == f"sha256:{stored.content_hash[:12]}"
    window = engineer_covariates(bars.filter(pl.col("ts") < CUTOFF).tail(128))
    quantiles = predict_quantiles(loaded.pipeline, [{"target": window["close"].to_numpy(), "past_covariates": {
        name: window[name].to_numpy() for name in ("volume", "high_low_spread")}}], 10, 128)
    assert quantiles.shape == (1, 10, 3) and np.isfinite(quantiles).all()


def test_when_hourly_fx_bars_train_a_challenger_then_it_is_registered_for_the_hourly_cadence_with_its_horizon(
    real_bars, tiny_checkpoint, database_url, conn, tmp_path, instance
):
    eurusd = real_bars("EURUSD")
    (tmp_path / "bars" / "1h").mkdir(parents=True)
    eurusd.drop("symbol").write_parquet(tmp_path / "bars" / "1h" / "EURUSD.parquet")
    resources = goog_resources(tmp_path, database_url, tiny_checkpoint)
    (tmp_path / "instruments.yaml").write_text("instruments:\n  - {symbol: EURUSD, asset_class: fx, calendar: 24/5}\n")
    hourly = cadence_windows(HOURLY, "2017-01-01-00:00")

    result = dg.materialize([finetuned_asset(hourly)], partition_key="2017-11-01", resources=resources, instance=instance,
                            run_config={"ops": {"chronos2_finetuned_1h": {"config": {
                                "steps": 5, "batch_size": 16, "context_length": 128, "history_bars": 1024}}}})

    assert result.success
    [stored] = registry.checkpoints(conn, "1h")
    cutoff = datetime(2017, 12, 1, tzinfo=timezone.utc)
    assert (stored.timeframe, stored.horizon, stored.validation_bars, stored.training_to) == ("1h", 24, 96, cutoff)
    assert stored.training_from == eurusd.filter(pl.col("ts") < cutoff)["ts"][-1024]
    assert registry.checkpoints(conn, "1d") == [] and registry.challenger(conn, "1h") == stored


def test_when_a_registered_checkpoints_weights_change_on_disk_then_it_is_refused(conn, database_url, tiny_checkpoint, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    loaded = load_chronos2(str(folder))
    found, _ = registry.register(conn, registry.NewCheckpoint(
        "1d", checkpoint_digest(folder), loaded.version, str(folder), "base", "r", "base@r", "full",
        CUTOFF - timedelta(days=99), CUTOFF, 10, ["GOOG"], 1, 1e-3, 8, 64, 10, 0, None, "cpu", 0.1))
    registry.promote(conn, "1d", found.id, "a test", {}, forced=True)
    assert champion_runner(Chronos2Runner(model="configured"), database_url, "1d").model == str(folder)

    with (folder / "model.safetensors").open("r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\x00\x01\x02\x03")

    with pytest.raises(ModelUnavailableError, match=rf"checkpoint #{found.id} at .* has weights with sha256"):
        champion_runner(Chronos2Runner(model="configured"), database_url, "1d")


# ---------------------------------------------------------------------------
# The story of one cadence: train, shadow, score, promote, refuse, force, roll back
# ---------------------------------------------------------------------------


@dataclass
class Story:
    random_start: str
    challenger: registry.Checkpoint
    shadow_rows: pl.DataFrame
    served_rows_before_promotion: set[str]
    gateway_challenger_version: str
    catalog: Catalog
    challenger_track: PastForecasts
    registry_check_first: dg.AssetCheckEvaluation
    promote_first: tuple[int, str]
    champion_after_first: registry.Checkpoint
    service_model_after_first: str
    rows_after_first: set[str]
    perturbed: registry.Checkpoint
    registry_check_second: dg.AssetCheckEvaluation
    promote_second: tuple[int, str]
    force_without_reason: tuple[int, str]
    force_second: tuple[int, str]
    rollback_first: tuple[int, str]
    rows_after_rollback: set[str]
    rollback_second: tuple[int, str]
    rows_after_second_rollback: set[str]
    listing: tuple[int, str]
    events: list[registry.RegistryEvent]


def _registry_check(resources, instance) -> dg.AssetCheckEvaluation:
    result = dg.materialize([registry_asset(WINDOWS)], resources=resources, instance=instance)
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == PROMOTION_CHECK]
    return check


@pytest.fixture(scope="module")
def story(module_database_url, tiny_checkpoint, real_bars, tmp_path_factory) -> Story:
    root = tmp_path_factory.mktemp("finetune-story")
    write_goog(root, real_bars("GOOG"))
    resources = goog_resources(root, module_database_url, tiny_checkpoint)
    universe = load_instruments(str(root / "instruments.yaml"))
    chain_and_shadow = [*build_chain(WINDOWS, ["GOOG"]), challenger_forecasts_asset(WINDOWS)]
    instance = dg.DagsterInstance.ephemeral()
    conn = psycopg.connect(module_database_url, autocommit=True)

    def score() -> None:
        score_new_forecasts(conn, DAILY, FileSource(str(root / "bars")), universe, SCORED_UNTIL)

    def next_run(window: str) -> set[str]:
        dg.materialize(build_chain(WINDOWS, ["GOOG"]), partition_key=window, resources=resources, instance=instance,
                       run_config=CHAIN_CONFIG)
        return chronos2_versions(conn, window)

    # A challenger fine-tuned from the random start on the bars before the cutoff, shadowing the windows after it.
    fine_tune_run(resources, instance, TRAINING)
    challenger = registry.challenger(conn, "1d")
    range_run(chain_and_shadow, resources, instance, *SHADOW_RANGE)
    score()
    shadow_rows = read_predictions(conn, "1d", "chronos-2-challenger")
    served = set(read_predictions(conn, "1d", "chronos-2")["model_version"].to_list())
    gateway = latest_forecast(conn, "GOOG", "1d", "chronos-2-challenger").model_version
    # What the dashboard reads to offer the challenger and overlay its past forecasts on the closes.
    catalog = model_catalog(conn, ["GOOG"], "chronos-2")
    track = past_forecasts(conn, FileSource(str(root / "bars")), universe[0], DAILY, "chronos-2-challenger", 5,
                           SCORED_UNTIL)
    check_first = _registry_check(resources, instance)
    promote_first = models_cli(module_database_url, "promote", "--cadence", "1d")
    champion = registry.champion(conn, "1d")
    assert champion is not None, promote_first[1]  # the later steps build on this promotion
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CHRONOS2_MODEL", str(tiny_checkpoint))
        service_model = chronos2_runner(Settings.from_env(), {"DATABASE_URL": module_database_url}).model
    rows_first = next_run(NEXT_WINDOWS[0])

    # The champion's weights, perturbed, as the next challenger; both forecast the same windows again.
    perturbed, _ = registry.register(conn, perturbed_copy(champion, root / "perturbed"))
    range_run(chain_and_shadow, resources, instance, *SHADOW_RANGE)
    score()
    check_second = _registry_check(resources, instance)
    promote_second = models_cli(module_database_url, "promote", "--cadence", "1d")
    no_reason = models_cli(module_database_url, "promote", "--cadence", "1d", "--force")
    forced = models_cli(module_database_url, "promote", "--cadence", "1d", "--force", "--reason", "a test forces it")

    rollback_first = models_cli(module_database_url, "rollback", "--cadence", "1d", "--reason", "worse in production")
    rows_rollback = next_run(NEXT_WINDOWS[1])
    rollback_second = models_cli(module_database_url, "rollback", "--cadence", "1d")
    rows_second = next_run(NEXT_WINDOWS[2])
    story = Story(
        load_chronos2(str(tiny_checkpoint)).version, challenger, shadow_rows, served, gateway, catalog, track, check_first, promote_first, champion,
        service_model, rows_first, perturbed, check_second, promote_second, no_reason, forced, rollback_first,
        rows_rollback, rollback_second, rows_second, models_cli(module_database_url, "list", "--cadence", "1d"),
        registry.events(conn, "1d"),
    )
    conn.close()
    return story


def test_when_a_challenger_shadows_then_its_rows_are_apart_from_the_served_ones_and_only_after_its_cutoff(story):
    assert story.challenger.training_to == CUTOFF and story.challenger.finetune_mode == "full"
    assert set(story.shadow_rows["model_version"].to_list()) == {story.challenger.model_version}
    assert story.shadow_rows["as_of"].min() >= CUTOFF
    assert story.served_rows_before_promotion == {story.random_start}
    # Readable by model name through the gateway's read path, never as chronos-2.
    assert story.gateway_challenger_version == story.challenger.model_version


def test_when_a_challenger_has_rows_then_the_dashboard_offers_it_and_overlays_its_past_forecasts_on_the_closes(story):
    offered = {m.model_name: (m.label, m.kind, m.symbols("1d")) for m in story.catalog.models}
    assert offered["chronos-2-challenger"] == ("Chronos-2 fine-tuned", "challenger", ["GOOG"])
    assert offered["chronos-2"] == ("Chronos-2", "zero-shot", ["GOOG"])
    track = story.challenger_track
    assert track.empty_reason is None and len(track.forecasts) == 5
    assert {f.model_version for f in track.forecasts} == {story.challenger.model_version}
    # Each forecast's steps met the realised closes of the real bars.
    assert all(f.realised_steps == 10 and f.inside_band is not None for f in track.forecasts)
    assert all(step["close"] is not None for f in track.forecasts for step in f.steps)


def test_when_a_challenger_fine_tuned_from_the_random_start_beats_it_out_of_sample_then_it_is_promoted(story):
    status, printed = story.promote_first
    assert status == 0, printed
    assert story.registry_check_first.passed
    assert story.registry_check_first.metadata["forecasts"].value >= MIN_FORECASTS
    assert story.registry_check_first.metadata["scaled_mae_p_value"].value < 0.05
    assert story.registry_check_first.metadata["quantile_loss_p_value"].value < 0.05
    assert "PASSED" in printed and "From the next 1d run on" in printed
    assert story.champion_after_first.id == story.challenger.id
    assert story.rows_after_first == {story.challenger.model_version}
    assert story.service_model_after_first == story.challenger.path


def test_when_a_challenger_is_made_worse_on_purpose_then_promotion_is_refused_saying_why(story):
    status, printed = story.promote_second
    assert status == 1
    assert "refused" in printed and "NOT PASSED: scaled MAE of p50 is not lower at the 0.05 level" in printed
    assert not story.registry_check_second.passed
    assert story.registry_check_second.severity == dg.AssetCheckSeverity.WARN
    assert story.force_without_reason[0] == 2 and "--force needs --reason" in story.force_without_reason[1]
    assert story.force_second[0] == 0 and "FORCED" in story.force_second[1]


def test_when_promotions_are_rolled_back_then_the_next_runs_rows_carry_the_previous_champions_version(story):
    assert story.rollback_first[0] == 0 and f"champion is now #{story.challenger.id}" in story.rollback_first[1]
    assert story.rows_after_rollback == {story.challenger.model_version}
    assert story.rollback_second[0] == 0 and "the configured model" in story.rollback_second[1]
    assert story.rows_after_second_rollback == {story.random_start}
    actions = [(e.action, e.checkpoint_id, e.forced) for e in reversed(story.events)]
    assert actions == [
        ("register", story.challenger.id, False), ("promote", story.challenger.id, False),
        ("register", story.perturbed.id, False), ("promote", story.perturbed.id, True),
        ("rollback", story.perturbed.id, False), ("rollback", story.challenger.id, False),
    ]
    status, listing = story.listing
    assert status == 0 and "1d: champion the configured model" in listing and "(FORCED)" in listing


def test_when_no_challenger_is_registered_then_the_registry_check_warns_and_says_what_to_run(
    database_url, tiny_checkpoint, tmp_path, instance
):
    check = _registry_check(goog_resources(tmp_path, database_url, tiny_checkpoint), instance)

    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["why"].value == "no 1d challenger: materialise chronos2_finetuned_1d"


# ---------------------------------------------------------------------------
# The benchmark, in its smoke form
# ---------------------------------------------------------------------------


def test_when_the_benchmark_runs_in_smoke_mode_then_it_reports_cost_and_gain_and_what_the_gain_is_of(tmp_path):
    out = tmp_path / "finetune.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "finetune.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=280, cwd=REPO)

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    [cost] = result["cost"]
    assert (cost["geometry"], cost["mode"], cost["steps"], cost["device"]) == ("tiny", "lora", 5, "cpu")
    assert cost["seconds_per_100_steps"] > 0 and cost["peak_rss_mb"] > 0
    [gain] = result["gain"]
    assert (gain["symbol"], gain["origins"]) == ("GOOG", 40)
    assert 0 <= gain["scaled_mae_p_value"] <= 1 and 0 <= gain["quantile_loss_p_value"] <= 1
    assert "gain is that of the fine-tuning machinery, not of the published model" in done.stdout
