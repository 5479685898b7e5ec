"""Triton's model repository extension, in Triton's own shapes, for ``tritonclient``
(``get_model_repository_index``, ``load_model``, ``unload_model``).

Triton's semantics: a load brings up the model's default version from the repository
(its ``default`` alias, else its newest: Triton's ``latest 1`` policy) in place of the
versions that served before and that no alias names, and is a no-op when that version
already serves; an unload takes every version down. Both answer once done. Under
``/v2/repository/``, so they take the admin key (``access.py``).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import InvalidRequestError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, parse, read_body
from squeezer.server.lifecycle import ModelStatus
from squeezer.server.routes import runtime_of
from squeezer.server.schemas import versions as schema

router = APIRouter(tags=["Triton model repository"])
_ERRORS = error_responses("/v2/repository")
#: Our states as Triton names them.
_TRITON_STATE = {
    "ready": "READY",
    "loading": "LOADING",
    "verifying": "LOADING",
    "unloading": "UNLOADING",
    "available": "UNAVAILABLE",
    "evicted": "UNAVAILABLE",
    "failed": "UNAVAILABLE",
}


async def _body(request: Request) -> dict[str, object]:
    data = await read_body(request) if await request.body() else {}
    if not isinstance(data, dict):
        raise InvalidRequestError("expected a JSON object")
    return data


@router.post(
    "/v2/repository/index",
    summary="Every model version the server knows, with its state (Triton)",
    openapi_extra=body_schema(schema.RepositoryIndexBody),
    responses={200: {"model": list[schema.RepositoryIndexEntry]}, **_ERRORS},
)
async def repository_index(request: Request) -> Response:
    body = parse(await _body(request), schema.RepositoryIndexBody)
    statuses: list[ModelStatus] = await runtime_of(request).admin("status")
    entries = [
        {
            "name": v.name,
            "version": v.version,
            "state": _TRITON_STATE[v.state],
            "reason": v.reason or "",
        }
        for m in statuses
        for v in m.versions
        if not body.ready or v.state == "ready"
    ]
    return json_response(entries)


@router.post(
    "/v2/repository/models/{name}/load",
    summary="Load the model's default version from the repository (Triton)",
    responses=_ERRORS,
)
async def repository_load(request: Request, name: str) -> Response:
    parameters = (await _body(request)).get("parameters") or {}
    if not isinstance(parameters, dict) or set(parameters) - {"config"}:
        raise InvalidRequestError(
            "load parameters other than 'config' (model files sent in the request) are not "
            "supported: put the files in the model repository"
        )
    if parameters.get("config"):
        raise InvalidRequestError(
            "a config override is Triton's config.pbtxt; squeezer's settings are in the "
            "repository's NAME/squeezer.toml"
        )
    await runtime_of(request).admin("repository_load", name)
    return json_response({})


@router.post(
    "/v2/repository/models/{name}/unload",
    summary="Unload every version of the model (Triton)",
    responses=_ERRORS,
)
async def repository_unload(request: Request, name: str) -> Response:
    await runtime_of(request).admin("repository_unload", name)
    return json_response({})
