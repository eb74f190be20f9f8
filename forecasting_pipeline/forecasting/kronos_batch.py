"""Kronos's existing batch service, triggered over HTTP: the request, its errors, and the GPU lock held meanwhile.

Kronos is not changed. The service's API is a POST of ``{"timeframe", "window_start",
"window_end"}`` answered when the batch is done; any 2xx answer counts as success. While the
request is open this side holds the GPU advisory lock (``device.GPU_LOCK_KEY``), so lock-aware
processes see the GPU as busy. Errors name ``scheme://host:port/path`` only: a token or URL
credentials are sent, never shown.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from forecasting_pipeline.forecasting.device import advisory_lock

logger = logging.getLogger(__name__)

# A response is shown in metadata and errors only this far: a service may answer with a page of HTML.
RESPONSE_EXCERPT_CHARS = 300


class KronosBatchError(RuntimeError):
    """The batch service failed, refused or did not answer; the message names the URL without credentials."""


def describe_url(url: str) -> str:
    """``scheme://host[:port]/path``: the URL without user, password, query or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class BatchResponse:
    status: int
    seconds: float
    excerpt: str


def trigger_batch(url: str, body: dict, *, token: str | None, timeout_s: float) -> BatchResponse:
    """POST ``body`` as JSON to the batch service and wait for its answer; any 2xx is success.

    ``token`` is sent as a Bearer token; a user and password in the URL, as Basic auth.

    Raises
    ------
    KronosBatchError
        On a non-2xx answer (with the status and the start of the answer), no connection, or no
        answer within ``timeout_s``. The message never holds the token or the URL's credentials.
    """
    where = describe_url(url)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    parts = urlsplit(url)
    if parts.username is not None:
        # urllib does not send a URL's user and password itself: they leave the URL as Basic auth.
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode(errors="replace")
            return BatchResponse(response.status, time.perf_counter() - started, text[:RESPONSE_EXCERPT_CHARS])
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")[:RESPONSE_EXCERPT_CHARS]
        raise KronosBatchError(f"Kronos batch service at {where} answered {error.code} {error.reason}: {text}") from None
    except (TimeoutError, socket.timeout, urllib.error.URLError) as error:
        # urllib raises a timeout bare while reading the answer, wrapped in URLError while connecting.
        if isinstance(error, urllib.error.URLError) and not isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise KronosBatchError(f"Kronos batch service at {where} is unreachable: {error.reason}") from None
        raise KronosBatchError(
            f"Kronos batch service at {where} did not answer within {timeout_s:g} s "
            "(KRONOS_BATCH_TIMEOUT_S); the batch may still be running there"
        ) from None


def trigger_holding_gpu_lock(
    url: str, body: dict, *, token: str | None, timeout_s: float,
    lock_database_url: str | None, lock_key: int, lock_timeout_s: float,
) -> tuple[BatchResponse, dict[str, object]]:
    """Trigger one batch holding the GPU lock; returns the answer and the lock's record.

    Kronos is triggered whether or not the lock is taken: it ran unserialised before this existed
    and its latency must not regress. So when the lock is not taken within ``lock_timeout_s``
    (another GPU user held it), and when the lock's database cannot be reached at all, the batch
    is triggered without it, and the record says why (``gpu_lock_acquired`` False, and
    ``gpu_lock`` naming the unreachable database by host, port and name only). A Chronos-2 run
    that cannot reach that database does not use the GPU (``device``), so the two never share it
    unknowingly.
    """
    # Imported here, as device.advisory_lock does, so that the GPU check runs where only torch is installed.
    from forecasting_pipeline.storage.database import DatabaseUnavailableError, describe_database

    if not lock_database_url:
        return trigger_batch(url, body, token=token, timeout_s=timeout_s), {"gpu_lock": "not configured"}
    waited = time.perf_counter()
    with ExitStack() as stack:
        try:
            taken = stack.enter_context(advisory_lock(lock_database_url, lock_key, lock_timeout_s))
        except DatabaseUnavailableError:
            where = describe_database(lock_database_url)
            logger.warning("GPU lock database %s unreachable: triggering Kronos without the lock", where)
            lock = {"gpu_lock_acquired": False, "gpu_lock": f"not taken: its database {where} is unreachable",
                    "gpu_lock_wait_seconds": round(time.perf_counter() - waited, 3)}
            return trigger_batch(url, body, token=token, timeout_s=timeout_s), lock
        lock = {"gpu_lock_acquired": taken, "gpu_lock_wait_seconds": round(time.perf_counter() - waited, 3)}
        return trigger_batch(url, body, token=token, timeout_s=timeout_s), lock
