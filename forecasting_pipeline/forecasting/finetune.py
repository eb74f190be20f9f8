"""Fine-tuning Chronos-2 on the instruments' own bars, point-in-time, and storing the result as a plain checkpoint.

The training data is what the chain feeds the model (``market.features``: the close as target,
log volume and the high-low spread as past covariates), from bars closed strictly before a
cutoff. The last ``validation_windows * horizon`` bars of each instrument before the cutoff are
held out: the model never trains on them, and ``Chronos2Pipeline.fit`` evaluates each of those
windows every 100 steps and keeps the best weights.

``Chronos2Pipeline.fit`` (chronos-forecasting 2.3.2) does the training, fully or with LoRA
(``peft``). A LoRA adapter is merged into the base weights before saving, so every stored
checkpoint is an ordinary safetensors checkpoint that ``model.load_chronos2`` loads like any other.
Training runs where inference does (``device.run_on_device``): on the GPU under the shared lock
when it is free, else on the CPU.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from forecasting_pipeline.forecasting.device import DeviceRun, run_on_device
from forecasting_pipeline.forecasting.inputs import usable_model_inputs
from forecasting_pipeline.forecasting.model import checkpoint_digest, load_chronos2
from forecasting_pipeline.forecasting.runner import Chronos2Runner

logger = logging.getLogger(__name__)

FinetuneMode = Literal["lora", "full"]


@dataclass(frozen=True)
class TrainingParams:
    """How to fine-tune: see ``Chronos2Pipeline.fit`` for ``mode``, ``learning_rate``, ``steps``, ``batch_size``."""

    mode: FinetuneMode = "lora"
    learning_rate: float = 1e-5
    steps: int = 1000
    batch_size: int = 64
    context_length: int = 1024
    horizon: int = 10
    validation_windows: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("lora", "full"):
            raise ValueError(f"mode must be 'lora' or 'full', got {self.mode!r}")
        for name in ("steps", "batch_size", "context_length", "horizon", "validation_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")

    @property
    def validation_bars(self) -> int:
        return self.validation_windows * self.horizon


@dataclass(frozen=True)
class TrainingSplit:
    """The series one fine-tuning run reads: training inputs, validation inputs, and who was left out.

    ``train[i]`` and every validation input are ``{"target", "past_covariates"}`` dicts as
    ``predict`` takes them. ``first_bar``/``last_bar`` bound every bar read (``last_bar`` < cutoff).
    """

    train: list[dict]
    validation: list[dict]
    symbols: list[str]
    cutoff: datetime
    first_bar: datetime
    last_bar: datetime
    bars: int
    left_out: dict[str, str] = field(default_factory=dict)


class NothingToTrainOnError(ValueError):
    """No instrument has enough bars before the cutoff to train and validate on."""


def _slice(series: dict, end: int) -> dict:
    return {"target": series["target"][:end],
            "past_covariates": {name: values[:end] for name, values in series["past_covariates"].items()}}


def training_split(covariates: pl.DataFrame, cutoff: datetime, params: TrainingParams) -> TrainingSplit:
    """Split each instrument's bars closed before ``cutoff`` into training and held-out validation series.

    Parameters
    ----------
    covariates
        ``market.features.engineer_covariates`` rows (symbol, ts, close, covariates), any span;
        bars at or after ``cutoff`` are dropped here, whatever the caller passed.

    Raises
    ------
    NothingToTrainOnError
        When no instrument is left, naming each instrument and why.
    """
    before = covariates.filter(pl.col("ts") < cutoff)
    left_out: dict[str, str] = {}
    for symbol in sorted(set(covariates["symbol"].unique().to_list()) - set(before["symbol"].unique().to_list())):
        left_out[symbol] = f"no bar closed before the cutoff {cutoff.isoformat()}"
    train, validation, symbols = [], [], []
    held_out, needed = params.validation_bars, params.validation_bars + 2 * params.horizon
    for frame in before.partition_by("symbol", maintain_order=True):
        symbol = frame["symbol"][0]
        keys, inputs, rejected = usable_model_inputs(frame, "training", frame.height)
        if rejected:
            left_out[symbol] = rejected[0].message
            continue
        series = inputs[0]
        length = len(series["target"])
        if length < needed:
            left_out[symbol] = (f"{length} bars before the cutoff, fewer than {needed} (validation "
                                f"{held_out} + twice the horizon {params.horizon})")
            continue
        symbols.append(symbol)
        train.append(_slice(series, length - held_out))
        # Each validation input ends one window later; its last `horizon` bars are the targets.
        validation += [_slice(series, length - held_out + (w + 1) * params.horizon)
                       for w in range(params.validation_windows)]
    if not symbols:
        raise NothingToTrainOnError(
            f"nothing to fine-tune on before {cutoff.isoformat()}: "
            + ("; ".join(f"{s}: {why}" for s, why in sorted(left_out.items())) or "no bars were read")
        )
    kept = before.filter(pl.col("symbol").is_in(symbols))
    return TrainingSplit(train, validation, symbols, cutoff, kept["ts"].min(), kept["ts"].max(), kept.height, left_out)


@dataclass(frozen=True)
class FineTuned:
    """A fine-tuned checkpoint written to ``path`` (config.json + model.safetensors), and how it was made."""

    path: Path
    content_hash: str
    base_model: str
    base_revision: str
    base_version: str
    validation_loss: float | None
    train_losses: list[float]
    train_seconds: float
    seconds_per_step: float | None
    device_run: DeviceRun


def _loss_recorder():
    """A ``transformers.TrainerCallback`` that keeps the trainer's losses and when each step ended."""
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.eval_losses: list[float] = []
            self.train_losses: list[float] = []
            self.step_ends: list[float] = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_loss" in metrics:
                self.eval_losses.append(float(metrics["eval_loss"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.train_losses.append(float(logs["loss"]))

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

    return LossRecorder()


def _seconds_per_step(step_ends: list[float]) -> float | None:
    """The median time between consecutive steps: evaluations and the first step's warm-up do not skew it."""
    gaps = np.diff(step_ends)
    return float(np.median(gaps)) if len(gaps) else None


def _seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` for the block (unchanged when None), then set back."""
    import torch

    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fine_tune(runner: Chronos2Runner, split: TrainingSplit, params: TrainingParams, out_dir: Path) -> FineTuned:
    """Fine-tune ``runner``'s checkpoint on ``split`` and save the result to ``out_dir`` (created; must not exist).

    The base model loads in float32 whatever the runner's precision; ``runner.num_threads`` sets
    torch's CPU threads for the training only. The same split, params and seed on the same device
    give the same weights.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; a fine-tuned checkpoint is written to a new folder")

    def work(device: str) -> tuple[dict, object, float]:
        with _threads(runner.num_threads):
            return train(device)

    def train(device: str) -> tuple[dict, object, float]:
        started = time.perf_counter()
        _seed(params.seed)
        base = load_chronos2(runner.model, runner.revision, device, "float32")
        recorder = _loss_recorder()
        with tempfile.TemporaryDirectory(prefix="chronos2-fit-") as scratch:
            tuned = base.pipeline.fit(
                split.train, prediction_length=params.horizon, validation_inputs=split.validation,
                finetune_mode=params.mode, context_length=params.context_length,
                learning_rate=params.learning_rate, num_steps=params.steps, batch_size=params.batch_size,
                output_dir=scratch, callbacks=[recorder], remove_printer_callback=True,
                seed=params.seed, data_seed=params.seed, disable_tqdm=True,
                logging_steps=max(1, min(100, params.steps // 10)),
            )
        model = tuned.model.merge_and_unload() if params.mode == "lora" else tuned.model
        model = model.to("cpu")
        model.config.fine_tuned_from = base.version
        if out_dir.exists():  # a CUDA attempt that ran out of memory after saving
            shutil.rmtree(out_dir)
        model.save_pretrained(out_dir, safe_serialization=True)
        base_info = {"model": base.model_id, "revision": base.revision, "version": base.version}
        return base_info, recorder, time.perf_counter() - started

    (base_info, recorder, seconds), device_run = run_on_device(
        work, runner.gpu_settings(), database_url=runner.lock_database_url,
    )
    best = min(recorder.eval_losses) if recorder.eval_losses else None
    logger.info("fine-tuned %s for %d steps on %s in %.1fs; best validation loss %s",
                base_info["version"], params.steps, device_run.device, seconds, best)
    return FineTuned(out_dir, checkpoint_digest(out_dir), base_info["model"], base_info["revision"],
                     base_info["version"], best, recorder.train_losses, seconds,
                     _seconds_per_step(recorder.step_ends), device_run)


def store_checkpoint(staged: Path, registry_dir: Path, timeframe: str) -> Path:
    """Move a checkpoint written by ``fine_tune`` into the registry folder, named by its weights' digest.

    The same weights stored twice end in one folder (the second copy is dropped).
    """
    digest = checkpoint_digest(staged)
    final = Path(registry_dir) / timeframe / f"chronos2-{timeframe}-{digest[:16]}"
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and checkpoint_digest(final) == digest:
        shutil.rmtree(staged)
    else:
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(staged), final)
    return final.resolve()


def staging_dir(registry_dir: Path) -> Path:
    """A new folder name inside the registry's filesystem, for ``fine_tune`` to write to (then ``store_checkpoint``)."""
    root = Path(registry_dir) / ".staging"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="fit-", dir=root)) / "checkpoint"
