"""The registry of fine-tuned Chronos-2 checkpoints and its event log: ``chronos2_checkpoints``, ``chronos2_registry_events``.

Migration ``20260901_chronos2_registry.sql`` creates both. Per cadence, at most one checkpoint is
the ``champion`` (it serves; with none, the configured model does) and at most one the
``challenger`` (it shadows the champion). Every change of status is one transaction that also
writes its event, under a lock per cadence, so two promotions of one cadence never interleave.
Inside a caller's open transaction each is a savepoint of it: the caller commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

CHALLENGER = "challenger"
CHAMPION = "champion"
RETIRED = "retired"


class RegistryError(ValueError):
    """A registry change that cannot be made as asked (the message says why)."""


@dataclass(frozen=True)
class NewCheckpoint:
    """What a fine-tuning run records about the checkpoint it stored."""

    timeframe: str
    content_hash: str
    model_version: str
    path: str
    base_model: str
    base_revision: str
    base_version: str
    finetune_mode: str
    training_from: datetime
    training_to: datetime
    validation_bars: int
    instruments: list[str]
    steps: int
    learning_rate: float
    batch_size: int
    context_length: int
    horizon: int
    seed: int
    validation_loss: float | None
    device: str
    train_seconds: float


@dataclass(frozen=True)
class Checkpoint(NewCheckpoint):
    """A registered checkpoint: what was recorded, its id, status and when it was registered."""

    id: int = 0
    status: str = CHALLENGER
    created_at: datetime | None = None

    @property
    def label(self) -> str:
        return f"#{self.id} ({self.content_hash[:12]}, {self.status})"


@dataclass(frozen=True)
class RegistryEvent:
    """One line of the event log; ``champion_before``/``after`` None mean the configured model."""

    id: int
    timeframe: str
    action: str
    checkpoint_id: int | None
    champion_before: int | None
    champion_after: int | None
    forced: bool
    reason: str
    evidence: dict
    actor: str
    created_at: datetime


_NEW_COLUMNS = tuple(f.name for f in fields(NewCheckpoint))
_COLUMNS = ", ".join((*_NEW_COLUMNS, "id", "status", "created_at"))
_EVENT_COLUMNS = ", ".join(f.name for f in fields(RegistryEvent))


def _lock(conn: psycopg.Connection, timeframe: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"chronos2_registry:{timeframe}",))


def _checkpoints(conn: psycopg.Connection, where: str, params: Sequence) -> list[Checkpoint]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM chronos2_checkpoints WHERE {where} ORDER BY timeframe, id", params)
        return [Checkpoint(**row) for row in cur.fetchall()]


def _one(conn: psycopg.Connection, where: str, params: Sequence) -> Checkpoint | None:
    found = _checkpoints(conn, where, params)
    return found[0] if found else None


def champion(conn: psycopg.Connection, timeframe: str) -> Checkpoint | None:
    """The cadence's champion, or None when the configured model serves."""
    return _one(conn, "timeframe = %s AND status = 'champion'", (timeframe,))


def challenger(conn: psycopg.Connection, timeframe: str) -> Checkpoint | None:
    """The cadence's challenger (the checkpoint the shadow forecasts run), or None."""
    return _one(conn, "timeframe = %s AND status = 'challenger'", (timeframe,))


def checkpoint(conn: psycopg.Connection, checkpoint_id: int) -> Checkpoint | None:
    return _one(conn, "id = %s", (checkpoint_id,))


def checkpoints(conn: psycopg.Connection, timeframe: str | None = None) -> list[Checkpoint]:
    """Every registered checkpoint (of one cadence), oldest first."""
    return _checkpoints(conn, "%s::text IS NULL OR timeframe = %s", (timeframe, timeframe))


def events(conn: psycopg.Connection, timeframe: str | None = None, limit: int = 20) -> list[RegistryEvent]:
    """The newest ``limit`` events (of one cadence), newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            f"SELECT {_EVENT_COLUMNS} FROM chronos2_registry_events WHERE %s::text IS NULL OR timeframe = %s "
            "ORDER BY id DESC LIMIT %s",
            (timeframe, timeframe, limit),
        )
        return [RegistryEvent(**row) for row in cur.fetchall()]


def _event(conn: psycopg.Connection, timeframe: str, action: str, subject: int | None, before: int | None,
           after: int | None, reason: str, actor: str | None, evidence: dict | None = None,
           forced: bool = False) -> RegistryEvent:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "INSERT INTO chronos2_registry_events (timeframe, action, checkpoint_id, champion_before, champion_after, "
            "forced, reason, evidence, actor) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, COALESCE(%s, current_user)) "
            f"RETURNING {_EVENT_COLUMNS}",
            (timeframe, action, subject, before, after, forced, reason, json.dumps(evidence or {}), actor),
        )
        return RegistryEvent(**cur.fetchone())


def _set_status(conn: psycopg.Connection, checkpoint_id: int, status: str) -> None:
    conn.execute("UPDATE chronos2_checkpoints SET status = %s WHERE id = %s", (status, checkpoint_id))


def register(conn: psycopg.Connection, new: NewCheckpoint, actor: str | None = None) -> tuple[Checkpoint, bool]:
    """Record a stored checkpoint as its cadence's challenger; the previous challenger is retired.

    A checkpoint already registered for the cadence (the same weights, e.g. a re-run with the same
    data and seed) is returned as it is, with False.
    """
    with conn.transaction():
        _lock(conn, new.timeframe)
        known = _one(conn, "timeframe = %s AND content_hash = %s", (new.timeframe, new.content_hash))
        if known is not None:
            return known, False
        current = champion(conn, new.timeframe)
        previous = challenger(conn, new.timeframe)
        values = [getattr(new, name) for name in _NEW_COLUMNS]
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                f"INSERT INTO chronos2_checkpoints ({', '.join(_NEW_COLUMNS)}, status) "
                f"VALUES ({', '.join(['%s'] * len(_NEW_COLUMNS))}, 'retired') RETURNING {_COLUMNS}",
                values,
            )
            added = Checkpoint(**cur.fetchone())
        champion_id = current.id if current else None
        if previous is not None:
            # Retired first: one challenger per cadence at a time (a unique index holds it).
            _set_status(conn, previous.id, RETIRED)
            _event(conn, new.timeframe, "retire", previous.id, champion_id, champion_id,
                   f"superseded by challenger #{added.id}", actor)
        _set_status(conn, added.id, CHALLENGER)
        added = checkpoint(conn, added.id)
        _event(conn, new.timeframe, "register", added.id, champion_id, champion_id,
               f"fine-tuned on bars before {new.training_to.isoformat()}", actor)
    return added, True


def promote(conn: psycopg.Connection, timeframe: str, checkpoint_id: int, reason: str, evidence: dict,
            forced: bool = False, actor: str | None = None) -> RegistryEvent:
    """Make ``checkpoint_id`` the cadence's champion; the champion it replaces is retired.

    The caller has run the promotion test (``scoring.promotion``); ``evidence`` is its record, and
    ``forced`` says the test did not pass and a person promoted anyway.
    """
    with conn.transaction():
        _lock(conn, timeframe)
        target = checkpoint(conn, checkpoint_id)
        if target is None or target.timeframe != timeframe:
            raise RegistryError(f"no {timeframe} checkpoint #{checkpoint_id} in the registry")
        if target.status == CHAMPION:
            raise RegistryError(f"checkpoint #{checkpoint_id} is already the {timeframe} champion")
        current = champion(conn, timeframe)
        if current is not None:
            _set_status(conn, current.id, RETIRED)
        _set_status(conn, target.id, CHAMPION)
        return _event(conn, timeframe, "promote", target.id, current.id if current else None, target.id,
                      reason, actor, evidence, forced)


def rollback(conn: psycopg.Connection, timeframe: str, reason: str, actor: str | None = None) -> RegistryEvent:
    """Undo the promotion that made the current champion: it is retired, and the champion before it serves again.

    Rolling back again undoes the promotion before that, and so on back to the configured model.
    """
    with conn.transaction():
        _lock(conn, timeframe)
        current = champion(conn, timeframe)
        if current is None:
            raise RegistryError(f"nothing to roll back: no {timeframe} checkpoint is champion, the configured model serves")
        promoted = conn.execute(
            "SELECT champion_before FROM chronos2_registry_events WHERE timeframe = %s AND action = 'promote' "
            "AND champion_after = %s ORDER BY id DESC LIMIT 1",
            (timeframe, current.id),
        ).fetchone()
        previous = promoted[0] if promoted else None
        _set_status(conn, current.id, RETIRED)
        if previous is not None:
            _set_status(conn, previous, CHAMPION)
        return _event(conn, timeframe, "rollback", current.id, current.id, previous, reason, actor)
