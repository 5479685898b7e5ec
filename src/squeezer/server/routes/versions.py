"""The model-version admin API: list versions, load, unload, reload, move aliases.

Every route is under ``/admin/``, so it takes the admin key (``access.py``). Loads
answer when the version serves (or failed, with the reason): a swap of a large model
takes as long as its load, so clients give these calls a long timeout (``squeezer
models`` does).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import ModelNotFoundError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, parse, read_body
from squeezer.server.lifecycle import LoadRequest, ModelStatus
from squeezer.server.routes import runtime_of
from squeezer.server.schemas import versions as schema

router = APIRouter(tags=["Model versions (admin)"])
_ERRORS = error_responses("/admin/models")
_ONE = {200: {"model": schema.ModelOut}, **_ERRORS}


async def _optional_body(request: Request) -> object:
    """Bodies of these routes may be left out: every field has a default."""
    return await read_body(request) if await request.body() else {}


def _answer(status: ModelStatus) -> Response:
    return json_response(status.as_dict())


@router.get(
    "/admin/models",
    summary="Every model version with its state and aliases",
    responses={200: {"model": schema.ModelList}, **_ERRORS},
)
async def list_models(request: Request) -> Response:
    statuses: list[ModelStatus] = await runtime_of(request).admin("status")
    return json_response({"models": [m.as_dict() for m in statuses]})


@router.get("/admin/models/{name}", summary="One model's versions and aliases", responses=_ONE)
async def show_model(request: Request, name: str) -> Response:
    statuses: list[ModelStatus] = await runtime_of(request).admin("status")
    for status in statuses:
        if status.name == name:
            return _answer(status)
    raise ModelNotFoundError(f"model {name!r} is not known here", param="model")


async def _load(request: Request, name: str, version: str | None, reload: bool) -> Response:
    body = parse(await _optional_body(request), schema.LoadBody)
    load = LoadRequest(
        name,
        version if version is not None else body.version,
        body.source,
        body.settings,
        tuple(body.aliases),
        body.unload_replaced,
        reload,
    )
    return _answer(await runtime_of(request).admin("load", load))


@router.post(
    "/admin/models/{name}/load",
    summary="Load the model's default version (or the body's), beside what serves",
    openapi_extra=body_schema(schema.LoadBody),
    responses=_ONE,
)
async def load_model(request: Request, name: str) -> Response:
    return await _load(request, name, None, reload=False)


@router.post(
    "/admin/models/{name}/versions/{version}/load",
    summary="Load a version; with aliases and unload_replaced, a drain-correct swap",
    openapi_extra=body_schema(schema.LoadBody),
    responses=_ONE,
)
async def load_version(request: Request, name: str, version: str) -> Response:
    return await _load(request, name, version, reload=False)


@router.post(
    "/admin/models/{name}/versions/{version}/reload",
    summary="Load a serving version again from its source, then retire the old load",
    openapi_extra=body_schema(schema.LoadBody),
    responses=_ONE,
)
async def reload_version(request: Request, name: str, version: str) -> Response:
    return await _load(request, name, version, reload=True)


async def _unload(request: Request, name: str, version: str | None) -> Response:
    body = parse(await _optional_body(request), schema.UnloadBody)
    return _answer(await runtime_of(request).admin("unload", name, version, body.force))


@router.post(
    "/admin/models/{name}/versions/{version}/unload",
    summary="Unload a version once the requests it accepted are answered",
    openapi_extra=body_schema(schema.UnloadBody),
    responses=_ONE,
)
async def unload_version(request: Request, name: str, version: str) -> Response:
    return await _unload(request, name, version)


@router.post(
    "/admin/models/{name}/unload",
    summary="Unload every version of a model",
    openapi_extra=body_schema(schema.UnloadBody),
    responses=_ONE,
)
async def unload_model(request: Request, name: str) -> Response:
    return await _unload(request, name, None)


@router.put(
    "/admin/models/{name}/aliases/{alias}",
    summary="Point an alias at a serving version (atomically)",
    openapi_extra=body_schema(schema.AliasBody),
    responses=_ONE,
)
async def set_alias(request: Request, name: str, alias: str) -> Response:
    body = parse(await read_body(request), schema.AliasBody)
    return _answer(await runtime_of(request).admin("set_alias", name, alias, body.version))


@router.delete("/admin/models/{name}/aliases/{alias}", summary="Remove an alias", responses=_ONE)
async def delete_alias(request: Request, name: str, alias: str) -> Response:
    return _answer(await runtime_of(request).admin("set_alias", name, alias, None))
