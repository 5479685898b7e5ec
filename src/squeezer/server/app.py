"""The app factory: one ``Settings`` in, one ASGI app out, wiring and nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from squeezer import __version__
from squeezer.config import Settings
from squeezer.errors import InvalidRequestError, SqueezerError
from squeezer.server import tracing
from squeezer.server.access import AccessPolicy, add_security_scheme
from squeezer.server.errors import error_response, http_error_response
from squeezer.server.jsonio import add_body_schemas
from squeezer.server.metrics import Metrics
from squeezer.server.middleware import HttpGuard, InFlight
from squeezer.server.routes import (
    admin,
    hf,
    kserve,
    openai,
    openai_chat,
    openai_completions,
    rerank,
    tei,
    tgi,
    triton_generate,
    triton_repository,
    versions,
)
from squeezer.server.runtime import Phase, Runtime

log = logging.getLogger("squeezer")


def create_app(
    settings: Settings, *, runtime: Runtime | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """Build the app; models load in its lifespan (``/ready`` answers once they have)."""
    metrics = metrics or Metrics()
    runtime = runtime or Runtime(settings, observer=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        log.info(
            "squeezer ready: %d model(s) in %.1f s", len(runtime.registry), runtime.cold_start_s
        )
        try:
            yield
        finally:
            await runtime.stop()
            log.info("squeezer stopped")

    app = FastAPI(
        title="squeezer",
        version=__version__,
        description="Transformer models served with dynamic batching; TEI, OpenAI and "
        "HF Inference API dialects.",
        lifespan=lifespan,
        **tracing.fastapi_telemetry_off(),
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.access = access = AccessPolicy.from_settings(settings)

    async def on_squeezer_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        return error_response(InvalidRequestError(f"invalid request: {exc}"), request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return http_error_response(exc.status_code, message, request.url.path)

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(SqueezerError, on_squeezer_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_squeezer_error)

    for module in (
        admin,
        versions,
        triton_repository,
        kserve,
        triton_generate,
        tei,
        tgi,
        openai,
        openai_completions,
        openai_chat,
        rerank,
        hf,
    ):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = add_security_scheme(add_body_schemas(schema))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    in_flight = InFlight()
    app.state.in_flight = in_flight
    app.add_middleware(
        HttpGuard,  # type: ignore[arg-type]
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        draining=lambda: runtime.phase in (Phase.DRAINING, Phase.STOPPED),
        in_flight=in_flight,
        access=access,
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,  # type: ignore[arg-type]
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "DELETE", "PUT", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        )
    tracing.add_middleware(app)
    return app
