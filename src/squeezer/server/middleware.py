"""One pure-ASGI layer in front of every route: body limit, drain, in-flight, metrics.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware`` because that one costs a
task and a memory stream per request, which the hot path cannot afford.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from squeezer.errors import PayloadTooLargeError, UnavailableError
from squeezer.server.errors import error_response
from squeezer.server.metrics import Metrics

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
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.draining = draining
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        refusal: Exception | None = None
        if self.draining() and path not in _ALWAYS_OPEN:
            refusal = UnavailableError("server is shutting down")
        else:
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                refusal = self._too_large(length)
        if refusal is not None:
            response = error_response(refusal, path)
            self.metrics.request_started()
            await response(scope, receive, send)
            self.metrics.request_finished("refused", response.status_code, 0.0)
            return

        status = 500
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large(received)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counted = path not in _ALWAYS_OPEN
        if counted:
            self.in_flight.enter()
        self.metrics.request_started()
        t0 = time.perf_counter()
        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            if counted:
                self.in_flight.leave()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_finished(template, status, time.perf_counter() - t0)

    def _too_large(self, size: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body has {size} bytes or more; this server takes at most "
            f"{self.max_body_bytes} (--max-body-bytes)"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
