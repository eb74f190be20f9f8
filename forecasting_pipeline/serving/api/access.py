"""Who may call the service: the bearer token, checked before anything of the request is read.

With a token configured, every endpoint but ``/healthz`` and ``/readyz`` requires
``Authorization: Bearer <token>`` over TCP; ``public_dashboard`` leaves the dashboard and the
``/showcase`` reads open too. FastAPI reads and parses a body before it resolves dependencies, so
the check is a pure ASGI middleware: a request without the token is answered 401 before its body
is received. The token is compared in constant time and appears in no answer or log line.

The Unix socket of the runs (``LocalSocket``) needs no token: it is created mode 0600, so only the
user who started the service (or root) can connect, as with PostgreSQL's peer authentication.
"""

from __future__ import annotations

import hmac
import json

from forecasting_pipeline.serving.api.errors import error_body

ALWAYS_OPEN = frozenset({"/healthz", "/readyz"})
DASHBOARD_PATHS = ("/showcase/", "/static/")
LOCAL_SOCKET = "forecasting_pipeline.local_socket"


def is_public(path: str, public_dashboard: bool) -> bool:
    if path in ALWAYS_OPEN:
        return True
    return public_dashboard and (path == "/" or path.startswith(DASHBOARD_PATHS))


class TokenGuard:
    """ASGI middleware: 401 for a request without the configured bearer token, before its body is read."""

    def __init__(self, app, token: str | None, public_dashboard: bool = False) -> None:
        self.app = app
        self._token = None if token is None else token.encode()
        self.public_dashboard = public_dashboard

    async def __call__(self, scope, receive, send) -> None:
        if (self._token is None or scope["type"] != "http" or scope.get(LOCAL_SOCKET)
                or is_public(scope["path"], self.public_dashboard) or self._presented_ok(scope)):
            await self.app(scope, receive, send)
            return
        content = json.dumps(error_body(("Authorization", "a valid 'Bearer' token is required"))).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
            (b"www-authenticate", b"Bearer"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": content})

    def _presented_ok(self, scope) -> bool:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, presented = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token)


class LocalSocket:
    """ASGI wrapper of the app served on the runs' Unix socket: marks its requests as local (no token needed)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope = {**scope, LOCAL_SOCKET: True}
        await self.app(scope, receive, send)
