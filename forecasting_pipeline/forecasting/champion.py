"""Which checkpoint serves a cadence: the registry's champion when it names one, else the configured model.

This is the one place that decides it. A run of the chain resolves it when the run starts (so a
promotion or rollback takes effect from the next run on) and the forecast service when it starts.
A registered checkpoint is checked against the digest the registry recorded before it is used:
weights changed on disk since are refused rather than served under the recorded name.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import psycopg

from forecasting_pipeline.forecasting.model import ModelUnavailableError, checkpoint_digest
from forecasting_pipeline.forecasting.batch_wire import model_key
from forecasting_pipeline.forecasting.runner import Chronos2Runner
from forecasting_pipeline.forecasting.service_client import ServiceUnavailable, served_model
from forecasting_pipeline.storage import model_registry
from forecasting_pipeline.storage.database import connect
from forecasting_pipeline.storage.model_registry import Checkpoint

logger = logging.getLogger(__name__)


def _verified(found: Checkpoint) -> Checkpoint:
    path = Path(found.path)
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(
            f"{found.timeframe} checkpoint #{found.id} ({found.status}) is missing from {path}; restore the folder or "
            "roll back with `forecasting-pipeline models rollback`"
        )
    digest = checkpoint_digest(path)
    if digest != found.content_hash:
        raise ModelUnavailableError(
            f"{found.timeframe} checkpoint #{found.id} at {path} has weights with sha256 {digest[:16]}..., not the "
            f"registered {found.content_hash[:16]}...: refusing to serve changed weights under its name"
        )
    return found


def runner_for(runner: Chronos2Runner, found: Checkpoint) -> Chronos2Runner:
    """``runner`` running the registered checkpoint ``found`` (verified), with the same device and GPU settings."""
    return replace(runner, model=str(Path(_verified(found).path)), revision=None)


def _with_server(chosen: Chronos2Runner, registered: set[str], timeframe: str) -> Chronos2Runner:
    """``chosen``, without its forecast service when that service runs another checkpoint because of the registry.

    A service started before a promotion or rollback, or serving the other cadence's champion, would
    refuse this run's batch; the run then loads its model itself, with a warning that says how to
    let the service serve it. Any other mismatch (two configured models, another precision) keeps
    the socket, so the run fails naming both, as it does without a registry.
    """
    if chosen.server_socket is None:
        return chosen
    try:
        serving = served_model(chosen.server_socket, chosen.server_timeout_s)
    except ServiceUnavailable:
        return chosen  # nothing answers: the runner falls back to loading the model itself anyway
    wanted = model_key(chosen.model, chosen.revision, chosen.dtype)
    if all(serving.get(name) == value for name, value in wanted.items()):
        return chosen
    if not ({serving.get("model"), wanted["model"]} & registered):
        return chosen
    logger.warning(
        "the forecast service at %s runs %s, not this %s run's %s: the run loads it itself; restart "
        "`forecasting-pipeline serve` with SERVE_CADENCE=%s to serve it",
        chosen.server_socket, serving.get("model"), timeframe, chosen.model, timeframe,
    )
    return replace(chosen, server_socket=None)


def _registry(database_url: str, timeframe: str, status: str) -> tuple[Checkpoint | None, set[str]]:
    """The cadence's checkpoint of ``status`` (or None), and the resolved paths of every registered checkpoint."""
    conn = connect(database_url)
    try:
        found = (model_registry.champion if status == model_registry.CHAMPION else model_registry.challenger)(
            conn, timeframe)
        return found, {str(Path(c.path).resolve()) for c in model_registry.checkpoints(conn)}
    except psycopg.errors.UndefinedTable:
        # A database whose migrations predate the registry has no champion.
        return None, set()
    finally:
        conn.close()


def champion_runner(runner: Chronos2Runner, database_url: str | None, timeframe: str) -> Chronos2Runner:
    """The runner of ``timeframe``'s champion; ``runner`` itself (the configured model) when there is none.

    ``database_url`` is the registry's (the ml_predictions database); None means no registry.
    """
    if database_url is None:
        return runner
    found, registered = _registry(database_url, timeframe, model_registry.CHAMPION)
    return _with_server(runner if found is None else runner_for(runner, found), registered, timeframe)


def challenger_runner(
    runner: Chronos2Runner, database_url: str, timeframe: str
) -> tuple[Checkpoint, Chronos2Runner] | None:
    """``timeframe``'s challenger and a runner for it (in this process: the forecast service runs the champion)."""
    found, _ = _registry(database_url, timeframe, model_registry.CHALLENGER)
    if found is None:
        return None
    return found, replace(runner_for(runner, found), server_socket=None)
