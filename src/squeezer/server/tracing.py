"""OpenTelemetry traces: optional (``pip install 'squeezer[otel]'``), configured by
the standard ``OTEL_*`` variables, off (and free) otherwise.

Turned on when the SDK is installed, ``OTEL_SDK_DISABLED`` is not true, and either
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP endpoint
is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT``): the OTLP exporter
then reads its endpoint, headers and protocol from the same variables, and the
resource its service name from ``OTEL_SERVICE_NAME`` (``squeezer`` by default).

What one request's trace holds: the HTTP server span (OpenTelemetry's ASGI
middleware, W3C ``traceparent`` honoured, its attribute ``squeezer.request_id`` tying
it to the ``X-Request-Id`` and the access log's ``trace_id``), and under it
``tokenize``, ``queue`` (waiting for a batch), one ``batch`` per forward pass its
inputs were in with its ``forward`` inside, or for a generation ``queue`` (waiting for
a sequence slot), ``prefill`` and ``decode`` (tokens and steps as attributes, not a
span per token). The engine's spans are stamped after the fact from the timings the
engine returns with each answer, so they cost the compute thread nothing and cross
the ``--api-workers`` socket as four numbers per batch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from squeezer.types import WorkTiming

log = logging.getLogger("squeezer")

_tracer: Any = None  # an opentelemetry Tracer once configured


def wanted() -> bool:
    """Whether the environment asks for traces (whether or not the SDK is here)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(
        os.environ.get(v)
        for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(provider: Any = None) -> bool:
    """Set up tracing for this process; True when it is on. ``provider``: a ready
    ``TracerProvider`` (tests pass one with an in-memory exporter); otherwise one is
    built from the environment when ``wanted()``."""
    global _tracer
    if provider is None:
        if not wanted():
            return False
        try:
            provider = _provider_from_env()
        except ImportError:
            log.warning(
                "OTEL_* variables ask for traces but the OpenTelemetry SDK is not "
                "installed: pip install 'squeezer[otel]'"
            )
            return False
    _tracer = provider.get_tracer("squeezer")
    return True


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def _provider_from_env() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "squeezer"}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    for name in (n.strip() for n in names):
        if name == "console":
            exporter: Any = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            exporter = OTLPSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s: squeezer knows otlp and console", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def fastapi_telemetry_off() -> dict[str, Any]:
    """FastAPI's keyword that turns its native OpenTelemetry off, where it has one
    (0.165 and later; ``{}`` before). squeezer's traces come from the ASGI middleware
    below, so FastAPI's own would duplicate the server span once a global provider is
    set, and unset it still asks on every request whether one is: three environment
    lookups per request, about 10% of the event loop's time at 500 embeddings/s
    (``benchmarks/profile_http.py``)."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def add_middleware(app: Any) -> None:
    """Put ``app`` inside OpenTelemetry's HTTP server span when tracing is on (added
    last, so it is the outermost layer). Body chunks get no spans of their own: a
    stream would otherwise make one per token."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls="/health,/ready,/metrics",
        exclude_spans=["receive", "send"],
        tracer=_tracer,
    )


def span(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished child span of the current one, stamped after the fact."""
    if _tracer is None:
        return
    s = _tracer.start_span(
        name, start_time=start_ns, attributes={f"squeezer.{k}": v for k, v in attributes.items()}
    )
    s.end(end_time=end_ns)


def work_spans(timing: WorkTiming) -> None:
    """``queue``, then a ``batch`` (with its ``forward``) per forward pass."""
    if _tracer is None or not timing.batches:
        return
    from opentelemetry import trace

    first = timing.batches[0].start_ns
    span("queue", first - int(timing.queued_s * 1e9), first)
    for b in timing.batches:
        s = _tracer.start_span(
            "batch",
            start_time=b.start_ns,
            attributes={"squeezer.batch_size": b.size, "squeezer.padded_tokens": b.padded_tokens},
        )
        with trace.use_span(s, end_on_exit=False):
            span("forward", b.forward_start_ns, b.forward_end_ns)
        s.end(end_time=b.end_ns)


def generation_spans(
    opened_ns: int,
    admitted_ns: int,
    first_token_ns: int,
    done_ns: int,
    *,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    span("queue", opened_ns, admitted_ns)
    span("prefill", admitted_ns, first_token_ns, prompt_tokens=prompt_tokens)
    span(
        "decode",
        first_token_ns,
        done_ns,
        completion_tokens=completion_tokens,
        steps=max(0, completion_tokens - 1),
    )


def annotate(**attributes: Any) -> str | None:
    """Set attributes on the current (HTTP) span; its trace id as 32 hex digits."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    current = trace.get_current_span()
    context = current.get_span_context()
    if not context.is_valid:
        return None
    current.set_attributes({f"squeezer.{k}": v for k, v in attributes.items() if v is not None})
    return format(context.trace_id, "032x")
