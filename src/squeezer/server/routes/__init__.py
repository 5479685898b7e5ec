"""One module per HTTP dialect; each maps its API onto the runtime's task calls."""

from __future__ import annotations

from starlette.requests import Request

from squeezer.server.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime
