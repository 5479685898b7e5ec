"""One pure-ASGI layer in front of every route: request id, keys, body limit, drain,
in-flight, metrics and the access log.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware`` because that one costs a
task and a memory stream per request, which the hot path cannot afford.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from squeezer.errors import (
    ForbiddenError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnavailableError,
)
from squeezer.server import tracing
from squeezer.server.access import Access, AccessPolicy, bearer_token, route_access
from squeezer.server.errors import error_response
from squeezer.server.logs import log_access
from squeezer.server.metrics import Metrics
from squeezer.server.observe import RequestRecord, current, request_id_from

#: Routes that keep answering while the server drains (probes and scrapes).
_ALWAYS_OPEN = frozenset({"/health", "/ready", "/metrics"})


class InFlight:
    """Counts requests being served (probes excluded), so a drain knows when it is done."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:  # created lazily, on the serving loop
            self._idle = asyncio.Event()
            if self.count == 0:
                self._idle.set()
        return self._idle

    def enter(self) -> None:
        self.count += 1
        self._event().clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._event().set()

    async def wait_idle(self) -> None:
        await self._event().wait()


class HttpGuard:
    """Refuses what must be refused before routing and counts what passes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        draining: Callable[[], bool],
        in_flight: InFlight,
        access: AccessPolicy,
    ) -> None:
        self.app = app
        self.access = access
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.draining = draining
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        record = RequestRecord(request_id_from(_header(scope, b"x-request-id")), scope["method"])
        token = current.set(record)
        # On the HTTP span now: OpenTelemetry's middleware ends it with the last body
        # chunk, before this layer's ``finally``.
        record.trace_id = tracing.annotate(request_id=record.request_id)
        id_header = (b"x-request-id", record.request_id.encode())
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                if record.version is not None:  # which version answered (swaps, canaries)
                    headers.append((b"x-model-version", record.version.encode()))
                message["headers"] = headers
            await send(message)

        try:
            refusal = self._refusal(path, scope)
            if refusal is not None:
                record.route = "refused"
                self.metrics.request_started()
                await error_response(refusal, path)(scope, receive, tracking_send)
            else:
                await self._serve(scope, receive, tracking_send, record)
        finally:
            record.release()
            seconds = time.perf_counter() - record.started
            record.status = status
            self.metrics.request_finished(record.figures(seconds))
            if path not in _ALWAYS_OPEN:
                log_access(record, seconds)
            current.reset(token)

    def _refusal(self, path: str, scope: Scope) -> Exception | None:
        if not self.access.open_to_all:
            level = route_access(path)
            if level is not Access.OPEN:
                token = bearer_token(_header(scope, b"authorization"))
                try:
                    self.access.check(level, token)
                except (UnauthorizedError, ForbiddenError) as e:
                    return e
        if self.draining() and path not in _ALWAYS_OPEN:
            return UnavailableError("server is shutting down")
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return self._too_large(length)
        return None

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, record: RequestRecord
    ) -> None:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large(received)
            return message

        counted = scope["path"] not in _ALWAYS_OPEN
        if counted:
            self.in_flight.enter()
        self.metrics.request_started()
        try:
            await self.app(scope, limited_receive, send)
        finally:
            if counted:
                self.in_flight.leave()
            record.route = getattr(scope.get("route"), "path", None) or "unmatched"

    def _too_large(self, size: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body has {size} bytes or more; this server takes at most "
            f"{self.max_body_bytes} (--max-body-bytes)"
        )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
