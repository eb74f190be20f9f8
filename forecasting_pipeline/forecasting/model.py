"""Loading Chronos-2 safely (safetensors only, pinnable revision) and writing random-initialised checkpoints.

Random checkpoints exist for offline runs, tests and benchmarks: the full-size one has the
published geometry and so the real compute cost; neither forecasts anything meaningful.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import platformdirs

from forecasting_pipeline.forecasting.precision import DtypeSetting, resolve_dtype
from forecasting_pipeline.forecasting.predict import MODEL_QUANTILE_LEVELS
from forecasting_pipeline.heap import imports_without_collection

if TYPE_CHECKING:
    from chronos import Chronos2Pipeline

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "amazon/chronos-2"
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: written by `forecasting-pipeline init-model`; its forecasts mean nothing."

# The published amazon/chronos-2 geometry (config.json): 119,477,664 parameters.
_QUANTILES = list(MODEL_QUANTILE_LEVELS)
_CHRONOS_CONFIG = {
    "context_length": 8192,
    "input_patch_size": 16,
    "input_patch_stride": 16,
    "output_patch_size": 16,
    "quantiles": _QUANTILES,
    "use_reg_token": True,
    "use_arcsinh": True,
    "max_output_patches": 64,
    "time_encoding_scale": 8192,
}
GEOMETRIES: dict[str, dict[str, int]] = {
    "full": {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
    # The chronos package's own test geometry: loads and predicts in milliseconds.
    "tiny": {"d_model": 6, "d_kv": 4, "d_ff": 8, "num_layers": 2, "num_heads": 4},
}



class ModelUnavailableError(RuntimeError):
    """The checkpoint cannot be loaded: not reachable, not found, or not safe to load."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a forecast records about the model that made it; the same whether it ran here or in the model server."""

    version: str
    device: str
    dtype: str


@dataclass(frozen=True)
class LoadedModel:
    pipeline: "Chronos2Pipeline"
    model_id: str
    revision: str
    random_weights: bool
    device: str
    dtype: str

    @property
    def version(self) -> str:
        """What ``model_version`` records: package version, model id, revision and the precision it ran in."""
        tag = " RANDOM-WEIGHTS" if self.random_weights else ""
        return f"chronos-forecasting=={_chronos_version()} {self.model_id}@{self.revision} {self.dtype}{tag}"

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.version, self.device, self.dtype)


@functools.cache
def _chronos_version() -> str:
    # Read once: importlib.metadata scans the installed distributions, about a millisecond a call,
    # and every model call (each slice of a run's batch in the service) names its version.
    return version("chronos-forecasting")


def write_random_checkpoint(directory: str | Path, size: Literal["tiny", "full"], seed: int = 0) -> Path:
    """Write a random-initialised Chronos-2 checkpoint (safetensors + config.json) to ``directory``."""
    import torch
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    if size not in GEOMETRIES:
        raise ValueError(f"size must be one of {sorted(GEOMETRIES)}, got {size!r}")
    torch.manual_seed(seed)
    config = Chronos2CoreConfig(
        **GEOMETRIES[size],
        chronos_config=dict(_CHRONOS_CONFIG),
        architectures=["Chronos2Model"],
        random_weights=True,
        random_weights_note=RANDOM_WEIGHTS_NOTE,
    )
    model = Chronos2Model(config)
    path = Path(directory)
    model.save_pretrained(path, safe_serialization=True)
    logger.info("wrote %s random-initialised Chronos-2 (%d parameters) to %s",
                size, sum(p.numel() for p in model.parameters()), path)
    return path


# A local checkpoint's revision is a digest of its weights. Hashing them is a noticeable part of a
# run's start, and a file whose path, size, mtime and inode are unchanged has the same digest, so
# digests are remembered across processes.
def _digest_cache_file() -> Path:
    # The user's cache folder: $XDG_CACHE_HOME/forecasting_pipeline, else ~/.cache/forecasting_pipeline on Linux.
    return platformdirs.user_cache_path("forecasting_pipeline") / "weights_sha256.json"


def _file_sha256(weights: Path, cache: dict[str, str]) -> str:
    stat = weights.stat()
    key = f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    if key not in cache:
        with weights.open("rb") as handle:
            cache[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return cache[key]


def _local_revision(path: Path) -> str:
    return "sha256:" + checkpoint_digest(path)[:12]


def checkpoint_digest(path: str | Path) -> str:
    """The sha256 (hex) over a checkpoint folder's safetensors files, in name order: what names its weights."""
    path = Path(path)
    cache_file = _digest_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    known = dict(cache)
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(bytes.fromhex(_file_sha256(weights, cache)))
    if cache != known:
        # Forget files that are gone (tests write checkpoints to temporary folders).
        cache = {key: value for key, value in cache.items() if Path(key.split("|", 1)[0]).exists()}
        try:  # an unwritable cache only costs the hash next time
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)
        except OSError:
            pass
    return digest.hexdigest()


def _check_local_checkpoint(path: Path) -> bool:
    """Refuse pickle-only checkpoints; return whether the config says the weights are random."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelUnavailableError(f"{path} is not a Chronos-2 checkpoint: it has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise ModelUnavailableError(
            f"{path} has no .safetensors weights"
            + (f" (only pickle weights: {', '.join(pickles)})" if pickles else "")
            + "; only safetensors checkpoints are loaded, since pickle files can run code when opened."
        )
    return bool(json.loads(config_file.read_text()).get("random_weights", False))


@functools.cache
def model_modules():
    """torch and chronos, the model's own imports, imported on first use: they stay for the process's life (heap.py)."""
    with imports_without_collection():
        import torch
        from chronos import Chronos2Pipeline
    return torch, Chronos2Pipeline


def use_attention(pipeline, implementation: Literal["eager", "sdpa"]) -> None:
    """Run ``pipeline``'s attention layers with ``implementation`` from its next call on.

    Chronos-2's layers read the choice from their config at each call (``_attn_implementation``,
    transformers' config property); ``set_attn_implementation`` does not reach them, as they predate
    transformers' attention interface.
    """
    configs = _ATTENTION_CONFIGS.get(pipeline)
    if configs is None:
        # Found once per pipeline: walking the model's modules costs more than a small model's call.
        configs = list({id(m.config): m.config for m in pipeline.model.modules() if hasattr(m, "config")}.values())
        _ATTENTION_CONFIGS[pipeline] = configs
    for config in configs:
        if getattr(config, "_attn_implementation", None) not in (None, implementation):
            config._attn_implementation = implementation


# pipeline -> the configs its layers read the attention implementation from.
_ATTENTION_CONFIGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def load_chronos2(
    model: str = DEFAULT_MODEL_ID,
    revision: str | None = None,
    device: str = "cpu",
    dtype: DtypeSetting = "auto",
) -> LoadedModel:
    """Load a Chronos-2 pipeline from a local directory or the model hub.

    Parameters
    ----------
    model
        A local checkpoint directory or a hub model id.
    revision
        Hub revision (commit, tag or branch) to pin; recorded in ``model_version``. For a local
        directory it is recorded as given, or else as a hash of the weights.
    dtype
        ``float32``, ``bfloat16``, or ``auto``: what ``precision.resolve_dtype`` picks for ``device``,
        as a run on that device would. The precision is recorded in ``model_version``.
    """
    from forecasting_pipeline.forecasting.device import TorchCuda

    torch, Chronos2Pipeline = model_modules()
    dtype = resolve_dtype(dtype, device, TorchCuda() if device == "cuda" else None)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    path = Path(model).expanduser()
    if path.is_dir():
        random_weights = _check_local_checkpoint(path)
        pipeline = Chronos2Pipeline.from_pretrained(
            str(path), device_map=device, dtype=torch_dtype, use_safetensors=True
        )
        return LoadedModel(pipeline, str(path.resolve()), revision or _local_revision(path), random_weights, device, dtype)
    if model.startswith((".", "/", "~")):
        raise ModelUnavailableError(f"CHRONOS2_MODEL={model!r} looks like a path but is not a directory")
    try:
        pipeline = Chronos2Pipeline.from_pretrained(
            model, revision=revision, device_map=device, dtype=torch_dtype, use_safetensors=True
        )
    except OSError as exc:
        raise ModelUnavailableError(
            f"Could not fetch Chronos-2 model {model!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" from the model hub ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "This machine may have no network access to the hub. Point CHRONOS2_MODEL at a local "
            "checkpoint directory instead (one holding config.json and model.safetensors), e.g. "
            "CHRONOS2_MODEL=/models/chronos-2; for an offline smoke run, "
            "`forecasting-pipeline init-model --size tiny DIR` writes a random-weight one."
        ) from None
    commit = getattr(pipeline.model.config, "_commit_hash", None)
    return LoadedModel(pipeline, model, revision or commit or "main", False, device, dtype)
