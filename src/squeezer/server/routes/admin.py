"""Probes, metrics and ``/info``: what operators and load balancers ask."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from squeezer import __version__
from squeezer.backends.device import gpu_memory
from squeezer.errors import UnavailableError
from squeezer.server import access
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import json_response
from squeezer.server.metrics import Metrics
from squeezer.server.routes import runtime_of
from squeezer.server.runtime import Phase, Runtime
from squeezer.server.schemas import tei
from squeezer.types import ModelInfo, Task

router = APIRouter(tags=["Admin"])


#: Probes answer 503 when stopped or not ready; ``/info`` while loading or draining.
_UNAVAILABLE = error_responses("/health", [503])


@router.get(
    "/health",
    summary="Liveness: the process is up and its compute threads answer",
    responses=_UNAVAILABLE,
)
async def health(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.phase is Phase.STOPPED:
        raise UnavailableError("server has stopped")
    return json_response({"status": "ok", "phase": runtime.phase.value})


@router.get(
    "/ready",
    summary="Readiness: every model loaded and warmed up, and not draining",
    responses=_UNAVAILABLE,
)
async def ready(request: Request) -> Response:
    runtime = runtime_of(request)
    if not runtime.ready:
        raise UnavailableError(f"server is {runtime.phase.value}")
    return json_response({"status": "ready", "models": [m.name for m in runtime.registry]})


@router.get(
    "/metrics",
    summary="Prometheus metrics (the admin key when one is set)",
    responses=error_responses("/metrics", [401]),
)
async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.remote is not None:  # an API process: the engine process holds them all
        body: bytes = await runtime.remote.call("metrics")
    else:
        body = render_metrics(runtime, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def render_metrics(runtime: Runtime, metrics: Metrics) -> bytes:
    """Gauges read at scrape time, then the whole registry."""
    refresh_gauges(runtime, metrics)
    return metrics.render()


def refresh_gauges(runtime: Runtime, metrics: Metrics) -> None:
    """The gauges read from the runtime rather than counted as things happen:
    generation load, prefix cache, KV blocks, golden losses, GPU memory."""
    for model in runtime.registry:  # each name's default version
        if model.generator is None:
            continue
        generator = runtime.engine.generator(model.engine_key)
        metrics.set_generation_load(model.name, *generator.load)
        metrics.set_prefix_cache(model.name, *generator.prefix_cache)
        if (blocks := generator.kv_blocks) is not None:
            metrics.set_kv_blocks(model.name, *blocks)
        if (speculation := generator.speculation) is not None:
            metrics.set_speculation(model.name, *speculation)
    for loaded in runtime.registry.loaded():
        report = loaded.info.golden
        for task in report.tasks if report is not None else ():
            metrics.set_golden(loaded.name, loaded.version, task.task, task.loss)
    devices = {m.device for m in runtime.model_infos()}
    metrics.set_gpu_memory(gpu_memory(devices, runtime.settings.gpu_memory_fraction))


def _model_type(info: ModelInfo) -> dict[str, Any]:
    """TEI's ``model_type``: what the model is, as TEI tells classifiers apart."""
    if info.tasks[0] is Task.EMBED or not info.labels:
        return {"embedding": {"pooling": info.pooling or "mean"}}
    labels = {
        "id2label": {str(i): name for i, name in enumerate(info.labels)},
        "label2id": {name: i for i, name in enumerate(info.labels)},
    }
    return {"reranker" if Task.RERANK in info.tasks else "classifier": labels}


@router.get(
    "/info",
    summary="TEI's Info for the default model, plus every served model's default version "
    "(their paths for admins only)",
    responses={200: {"model": tei.Info}, **error_responses("/info", [401, 503])},
)
async def info(request: Request) -> Response:
    runtime = runtime_of(request)
    s = runtime.settings
    admin = access.policy_of(request).sees_admin_fields(access.caller_token(request))
    if len(runtime.registry) == 0:
        raise UnavailableError("models are still loading")
    served = runtime.registry
    encoders = [m for m in served if Task.GENERATE not in m.info.tasks]
    generators = served.serving(Task.GENERATE)
    if served.serving(Task.EMBED):
        default = served.default_for(Task.EMBED).info
    else:
        default = (encoders[0] if encoders else served.default_for(Task.GENERATE)).info
    tgi_fields: dict[str, Any] = {}
    if generators:
        generator = served.default_for(Task.GENERATE).info
        tgi_fields = {
            # TGI's Info, for its default (the model-less /generate routes use it).
            "model_pipeline_tag": "text-generation",
            "model_device_type": generator.device,
            "max_best_of": 1,
            "max_stop_sequences": s.max_stop_sequences,
            "max_input_tokens": generator.max_input_length,
            "max_total_tokens": generator.max_total_tokens,
            "max_batch_total_tokens": s.max_batch_total_tokens
            or s.max_num_seqs * (generator.max_total_tokens or s.max_total_tokens),
            "max_batch_size": s.max_num_seqs,
            "max_waiting_tokens": 0,
            "waiting_served_ratio": 0.0,
            "validation_workers": runtime.tokenizer_workers,
            "router": "squeezer",
            "generation_model_id": generator.name,
        }
    return json_response(
        {
            "model_id": default.name,
            "served_model_name": default.name,
            "model_sha": default.content_hash,
            "model_dtype": default.dtype,
            "model_type": _model_type(default),
            "max_concurrent_requests": s.max_concurrent_requests,
            "max_input_length": default.max_input_length,
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_requests": s.max_batch_requests,
            "max_client_batch_size": s.max_client_batch_size,
            "auto_truncate": False,
            "tokenization_workers": runtime.tokenizer_workers,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "device": default.device,
            "backend": default.backend,
            "versions": default.versions.as_dict(),
            **tgi_fields,
            "models": [
                {
                    "name": m.name,
                    "version": m.version,
                    "tasks": [t.value for t in m.tasks],
                    "backend": m.backend,
                    "device": m.device,
                    "dtype": m.dtype,
                    "content_hash": m.content_hash,
                    "fingerprint": m.fingerprint,
                    "golden": m.golden.as_dict() if m.golden else None,
                    "path": m.path if admin else None,
                    "max_input_length": m.max_input_length,
                    "max_total_tokens": m.max_total_tokens,
                    "precision": m.precision.as_dict() if m.precision else None,
                    "versions": m.versions.as_dict(),
                }
                for m in runtime.model_infos()
            ],
        }
    )
