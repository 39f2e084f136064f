"""One ASGI middleware in front of the app: request ids, the access log, the API key and the body-size cap.

Every response carries ``X-Request-Id`` (the client's, when it is a short token, else a new one); the id
is in ``REQUEST_ID`` and on every log line (``configure_logging``). An unhandled error is logged with its
traceback and answered with a generic 500 body. ``/v1/*`` needs ``Authorization: Bearer KEY`` when a
key is set (as vLLM's ``--api-key``), except item images (``<img>`` cannot send the header).
"""
from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.exceptions import HTTPException

from .errors import error_response

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
log = logging.getLogger("think_rec.serve")
access_log = logging.getLogger("think_rec.serve.access")
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_OPEN = re.compile(r"/v1/items/[^/]+/image")


class Guard:
    """See the module docstring; ``max_body_bytes`` bounds the request body (413 beyond it)."""

    def __init__(self, app, api_key: str | None = None, max_body_bytes: int = 1 << 20):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    def _authorized(self, path: str, headers: dict[bytes, bytes]) -> bool:
        if not self.api_key or not path.startswith("/v1/") or _OPEN.fullmatch(path):
            return True
        given = headers.get(b"authorization", b"").decode("latin-1")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        start, status = time.perf_counter(), [0]

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413, f"the request body exceeds {self.max_body_bytes} bytes")
            return message

        try:
            length = headers.get(b"content-length", b"0")
            if not self._authorized(scope["path"], headers):
                await error_response(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                     headers={"WWW-Authenticate": "Bearer"})(scope, receive, send_with_id)
            elif length.isdigit() and int(length) > self.max_body_bytes:
                await error_response(413, f"the request body exceeds {self.max_body_bytes} bytes"
                                     )(scope, receive, send_with_id)
            else:
                await self.app(scope, capped_receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not status[0]:  # nothing sent yet
                await error_response(500, f"internal server error (request id {rid})")(scope, receive, send_with_id)
        finally:
            access_log.info('%s "%s %s" %d %.3fs', (scope.get("client") or ("-",))[0], scope["method"],
                            scope["path"], status[0], time.perf_counter() - start)
            REQUEST_ID.reset(token)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """``think_rec`` loggers to stderr, each line with its request id (access lines included)."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger("think_rec")
    root.addHandler(handler)
    root.setLevel(level)
