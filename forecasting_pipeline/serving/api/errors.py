"""Every refusal as JSON naming the field and the reason, never a traceback; and the request body size limit.

Shapes: ``{"errors": [{"field": "bars[3].close", "reason": "..."}]}``. Statuses: 400 a request that
cannot be read (a body that is not JSON or not an ``.npz``, a query parameter the endpoint does not
take or given twice), 422 a request read whose values are wrong (missing, malformed, naming nothing
known, or that the model cannot answer or over a limit), 401 a missing or wrong token (``access``), 409 a run's batch for another model, 413 a body
over the limit, 422 a request the model cannot answer or over a limit, 503 while the model loads
and when the scheduler refuses work (with ``Retry-After``). Anything unexpected is logged here and
answered 500 with no detail.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from forecasting_pipeline.forecasting.on_demand import InputProblem
from forecasting_pipeline.serving.api.scheduler import Overloaded

# Seconds a refused client is asked to wait: about one chunk of run work plus one on-demand call.
RETRY_AFTER_S = 1
# nginx's "client closed request": recorded in the metrics, never seen by the client.
CLIENT_GONE = 499

logger = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected before its answer: nothing is sent; the metrics record ``CLIENT_GONE``."""


class Refusal(Exception):
    """An answer other than success, with its status and problems."""

    def __init__(self, status: int, field: str | None, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.field, self.reason, self.headers = status, field, reason, headers


def error_body(*problems: tuple[str | None, str]) -> dict:
    return {"errors": [{"field": field, "reason": reason} for field, reason in problems]}


def field_path(location: tuple | list, prefix: str = "") -> str:
    """``("body", "bars", 3, "close")`` -> ``bars[3].close``; ``("query", "symbol")`` -> ``symbol``."""
    out = prefix
    for part in location:
        if part in ("body", "query") and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_problems(errors: list[dict], prefix: str = "") -> list[tuple[str, str]]:
    """Pydantic's errors as (field, reason); the reason leaves out the input, which may be large."""
    return [(field_path(e["loc"], prefix), _reason(e)) for e in errors]


def _reason(error: dict) -> str:
    if tuple(error["loc"]) == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object, sent with Content-Type: application/json"
    return error["msg"]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body(("body", "not valid JSON: " + errors[0]["msg"])), status_code=400)
        return JSONResponse(error_body(*validation_problems(errors)), status_code=422)

    @app.exception_handler(InputProblem)
    async def unusable(_request: Request, exc: InputProblem) -> JSONResponse:
        return JSONResponse(error_body((exc.field, exc.reason)), status_code=422)

    @app.exception_handler(ClientGone)
    async def gone(_request: Request, _exc: ClientGone) -> JSONResponse:
        return JSONResponse(error_body((None, "the client went away")), status_code=CLIENT_GONE)

    @app.exception_handler(Overloaded)
    async def overloaded(_request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse(error_body((None, str(exc))), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Refusal)
    async def refused(_request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse(error_body((exc.field, exc.reason)), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body((None, str(exc.detail))), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer is sent; the client sees none of it.
        logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse(error_body((None, "internal error; the service log has the details")), status_code=500)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app reads any of it.

    The declared Content-Length is checked first; a chunked body is counted as it arrives, so a
    client cannot get past the limit by not declaring its size. ``per_path`` sets other limits for
    some paths (a run's batch is far larger than an on-demand request).
    """

    def __init__(self, app, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(send, int(declared), limit)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._too_large(send, size, limit)
                return
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send, size: int, limit: int) -> None:
        content = json.dumps(error_body(("body", f"{size} bytes or more, over the limit of {limit}"))).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": content})
