"""The one table from squeezer's error kinds to HTTP statuses and dialect shapes.

TEI's contract (``{"error", "error_type"}`` with its own type names and statuses) is
used by the TEI, HF Inference API and admin routes, and by TGI's ``/generate``
routes with TGI's lowercase types (``validation``, ``generation``, ``overloaded``);
OpenAI's routes (and the ``/v1/rerank`` API vLLM serves) answer
``{"error": {"message", "type", "param", "code"}}``. Which shape a response takes is
decided by the path, so a failure before routing (a body too large) still speaks the
client's dialect. The Open Inference Protocol's paths (``/v2/...``: KServe v2,
Triton's repository and generate extensions) answer ``{"error": message}``.

A model asked for a task it cannot do is TEI's 424 ("Backend error: model is not a
re-ranker model") on TEI's own routes, and a 400 elsewhere.

The same table writes the OpenAPI contract: ``error_responses(path)`` declares every
status (and the error shape) an error can take on that route, so the published
statuses cannot drift from the ones ``error_response`` sends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from squeezer import errors as e
from squeezer.server.schemas import kserve, tei, tgi
from squeezer.server.schemas import openai as oa

log = logging.getLogger("squeezer")


class Dialect(str, Enum):
    TEI = "tei"
    #: HF Inference API routes: TEI's error shape, its own statuses.
    HF = "hf"
    OPENAI = "openai"
    #: TGI's generate routes: TEI's shape, TGI's lowercase error types.
    TGI = "tgi"
    #: The Open Inference Protocol (KServe v2, Triton): ``{"error": message}``.
    KSERVE = "kserve"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    tei_type: str
    openai_type: str
    #: OpenAI-compatible servers answer 400 where TEI answers 422, and 500 for 424.
    openai_status: int | None = None
    #: Status and type on TEI's own routes (``/predict``, ``/rerank``, ...) when they
    #: differ from the HF Inference API's, which shares TEI's shape.
    tei_route: tuple[int, str] | None = None
    #: TGI's ``error_type`` (validation, generation, overloaded, ...).
    tgi_type: str = "validation"


#: Most specific class first: the first ``isinstance`` match wins.
_TABLE: tuple[tuple[type[e.SqueezerError], ErrorKind], ...] = (
    (e.EmptyInputError, ErrorKind(400, "Empty", "invalid_request_error")),
    (e.TokenizerError, ErrorKind(422, "Tokenizer", "invalid_request_error", 400)),
    (e.ConflictError, ErrorKind(409, "Validation", "invalid_request_error")),
    (e.InvalidRequestError, ErrorKind(422, "Validation", "invalid_request_error", 400)),
    (
        e.UnauthorizedError,
        ErrorKind(401, "Unauthorized", "invalid_request_error", tgi_type="unauthorized"),
    ),
    (e.ForbiddenError, ErrorKind(403, "Forbidden", "permission_error", tgi_type="forbidden")),
    (e.ModelNotFoundError, ErrorKind(404, "Validation", "invalid_request_error")),
    (
        e.TaskNotSupportedError,
        ErrorKind(400, "Validation", "invalid_request_error", tei_route=(424, "Backend")),
    ),
    (e.PayloadTooLargeError, ErrorKind(413, "Validation", "invalid_request_error")),
    (e.OverloadedError, ErrorKind(429, "Overloaded", "rate_limit_error", tgi_type="overloaded")),
    (e.DeadlineExceededError, ErrorKind(504, "Overloaded", "timeout_error", tgi_type="overloaded")),
    (
        e.DeviceOutOfMemoryError,
        ErrorKind(503, "Overloaded", "service_unavailable_error", tgi_type="overloaded"),
    ),
    (e.BackendError, ErrorKind(424, "Backend", "server_error", 500, tgi_type="generation")),
    (
        e.UnavailableError,
        ErrorKind(503, "Unhealthy", "service_unavailable_error", tgi_type="unhealthy"),
    ),
)
_FALLBACK = ErrorKind(400, "Validation", "invalid_request_error")
_INTERNAL = ErrorKind(500, "Backend", "server_error", tgi_type="generation")
#: Field names the task layer reports, as OpenAI's request calls them.
_OPENAI_PARAMS = {"inputs": "input"}
_OPENAI_PATH = re.compile(r"^(/models/[^/]+)?/v1/")
_HF_PATH = re.compile(r"^/(models|pipeline)/")
_TGI_PATH = re.compile(r"^/generate(_stream)?$")
_KSERVE_PATH = re.compile(r"^/v2(/|$)")


def kind_of(error: e.SqueezerError) -> ErrorKind:
    for cls, kind in _TABLE:
        if isinstance(error, cls):
            return kind
    return _FALLBACK


def dialect_of(path: str) -> Dialect:
    if _OPENAI_PATH.match(path):
        return Dialect.OPENAI
    if _TGI_PATH.match(path):
        return Dialect.TGI
    if _KSERVE_PATH.match(path):
        return Dialect.KSERVE
    return Dialect.HF if _HF_PATH.match(path) else Dialect.TEI


def _status_and_type(kind: ErrorKind, dialect: Dialect) -> tuple[int, str]:
    """The HTTP status and ``error_type`` of ``kind`` on ``dialect``'s routes."""
    status, tei_type = kind.status, kind.tei_type
    if dialect is Dialect.TEI and kind.tei_route is not None:
        status, tei_type = kind.tei_route
    if dialect is Dialect.TGI:
        tei_type = kind.tgi_type
    if dialect is Dialect.OPENAI:
        status = kind.openai_status or kind.status
    return status, tei_type


#: The error body each dialect answers (its OpenAPI schema).
_ERROR_MODELS: dict[Dialect, type[BaseModel]] = {
    Dialect.TEI: tei.ErrorResponse,
    Dialect.HF: tei.ErrorResponse,
    Dialect.TGI: tgi.ErrorResponse,
    Dialect.OPENAI: oa.ErrorResponse,
    Dialect.KSERVE: kserve.ErrorResponse,
}
_DESCRIPTIONS = {
    400: "Empty input, or a request this route or model cannot serve",
    401: "No API key, or a wrong one (Authorization: Bearer KEY; --api-key)",
    403: "The route needs the admin key (--admin-api-key), or a loopback bind",
    404: "No such model",
    409: "Conflicts with the model versions' current state (admin routes)",
    413: "Body larger than --max-body-bytes",
    422: "Validation or tokenizer error",
    424: "Inference failed, or the model cannot do this task",
    429: "Overloaded: too many requests in flight (see Retry-After)",
    500: "Inference failed",
    503: "Not ready, shutting down, or out of device memory (see Retry-After)",
    504: "Waited longer than --request-timeout",
}


def error_statuses(path: str) -> list[int]:
    """Every status a squeezer error can take on the route at ``path`` (a template
    such as ``/models/{name}/v1/embeddings`` is fine: the dialect is by prefix)."""
    dialect = dialect_of(path)
    kinds = [kind for _, kind in _TABLE] + [_FALLBACK]
    return sorted({_status_and_type(kind, dialect)[0] for kind in kinds})


def error_responses(
    path: str, statuses: Iterable[int] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors of the route at ``path``: every status
    ``error_statuses`` gives (or only ``statuses``), in the dialect's error shape."""
    model = _ERROR_MODELS[dialect_of(path)]
    chosen = error_statuses(path) if statuses is None else sorted(statuses)
    return {s: {"model": model, "description": _DESCRIPTIONS[s]} for s in chosen}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Error")).lower()


def _render(error: Exception, path: str) -> tuple[int, dict[str, object]]:
    if isinstance(error, e.SqueezerError):
        kind, message, param = kind_of(error), error.message, error.param
        code = _snake(type(error).__name__)
    else:
        log.exception("unhandled error on %s", path, exc_info=error)
        kind, message, param, code = (
            _INTERNAL,
            f"internal error: {type(error).__name__}",
            None,
            None,
        )
    dialect = dialect_of(path)
    status, tei_type = _status_and_type(kind, dialect)
    if dialect is Dialect.OPENAI:
        param = _OPENAI_PARAMS.get(param, param) if param else None
        return status, {
            "error": {"message": message, "type": kind.openai_type, "param": param, "code": code}
        }
    if dialect is Dialect.KSERVE:
        return status, {"error": message}
    return status, {"error": message, "error_type": tei_type}


def error_body(error: Exception, path: str) -> dict[str, object]:
    """The dialect's error object, for errors inside a stream that already started."""
    return _render(error, path)[1]


def error_response(error: Exception, path: str) -> Response:
    """Render any exception as the dialect's error; unexpected ones are logged as 500s."""
    status, body = _render(error, path)
    headers = {}
    if isinstance(error, e.UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(error, e.OverloadedError | e.ModelNotReadyError):
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    elif status == 503:
        headers["Retry-After"] = "1"
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def http_error_response(status: int, message: str, path: str) -> Response:
    """Errors raised by routing itself (404 no such route, 405 wrong method)."""
    if dialect_of(path) is Dialect.OPENAI:
        body: dict[str, object] = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    elif dialect_of(path) is Dialect.KSERVE:
        body = {"error": message}
    else:
        body = {"error": message, "error_type": "Validation"}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
