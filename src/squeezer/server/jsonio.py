"""Fast JSON in and out of routes, with schemas still published in OpenAPI.

Bodies are parsed with orjson and validated by pydantic models; responses are orjson
bytes (numpy arrays serialized directly). FastAPI's own body handling would re-encode
every vector through ``jsonable_encoder`` and cost more than the model on small
requests (see DESIGN.md, "The HTTP hot path"). ``body_schema`` keeps ``/docs`` honest.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: Models whose JSON schema routes referenced; added to the OpenAPI components.
_SCHEMA_MODELS: dict[str, type[BaseModel]] = {}


async def read_json(request: Request, model: type[M]) -> M:
    """Parse and validate a body; every failure is a 4xx in the route's dialect."""
    return parse(await read_body(request), model)


async def read_body(request: Request) -> Any:
    """The body as JSON, not yet validated (for routes that look before choosing)."""
    body = await request.body()
    if not body:
        raise InvalidRequestError("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}") from None


def parse(data: Any, model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidRequestError(_describe(e), param=_first_param(e)) from None


def _describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = error.error_count() - len(parts)
    return "invalid request: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _first_param(error: ValidationError) -> str | None:
    errs = error.errors(include_url=False)
    return str(errs[0]["loc"][0]) if errs and errs[0]["loc"] else None


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=_DUMP_OPTIONS),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` with ``read_json``."""
    _SCHEMA_MODELS[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put the schemas ``body_schema`` referenced into the OpenAPI document."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _SCHEMA_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return openapi
