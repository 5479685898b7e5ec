"""One table maps error kinds to statuses; each dialect renders its own shape."""

from __future__ import annotations

import orjson
import pytest

from squeezer import errors as e
from squeezer.server.errors import Dialect, dialect_of, error_response


@pytest.mark.parametrize(
    ("error", "status", "tei_type"),
    [
        (e.EmptyInputError("x"), 400, "Empty"),
        (e.InputTooLongError("x"), 422, "Validation"),
        (e.TooManyInputsError("x"), 422, "Validation"),
        (e.TokenizerError("x"), 422, "Tokenizer"),
        (e.ModelNotFoundError("x"), 404, "Validation"),
        (e.PayloadTooLargeError("x"), 413, "Validation"),
        (e.OverloadedError("x"), 429, "Overloaded"),
        (e.DeadlineExceededError("x"), 504, "Overloaded"),
        (e.BackendError("x"), 424, "Backend"),
        (e.DeviceOutOfMemoryError("x"), 503, "Overloaded"),
        (e.UnavailableError("x"), 503, "Unhealthy"),
    ],
)
def test_status_and_tei_type(error: e.SqueezerError, status: int, tei_type: str) -> None:
    r = error_response(error, "/embed")
    assert r.status_code == status
    assert orjson.loads(r.body) == {"error": "x", "error_type": tei_type}


def test_openai_shape_and_retry_after() -> None:
    r = error_response(e.OverloadedError("busy", retry_after_s=3), "/v1/embeddings")
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    body = orjson.loads(r.body)["error"]
    assert body == {
        "message": "busy",
        "type": "rate_limit_error",
        "param": None,
        "code": "overloaded",
    }


def test_openai_statuses_differ_where_openai_servers_differ() -> None:
    assert error_response(e.InputTooLongError("x"), "/v1/embeddings").status_code == 400
    assert error_response(e.BackendError("x"), "/v1/embeddings").status_code == 500
    r = error_response(e.EmptyInputError("x", param="inputs"), "/v1/embeddings")
    assert orjson.loads(r.body)["error"]["param"] == "input"


def test_unexpected_errors_are_500_without_leaking_details() -> None:
    r = error_response(KeyError("secret"), "/models/a/v1/embeddings")
    assert r.status_code == 500
    assert "secret" not in r.body.decode()


def test_dialect_by_path() -> None:
    assert dialect_of("/v1/embeddings") is Dialect.OPENAI
    assert dialect_of("/models/x/v1/models") is Dialect.OPENAI
    assert dialect_of("/models/x") is Dialect.HF
    assert dialect_of("/pipeline/fill-mask/x") is Dialect.HF
    assert dialect_of("/embed") is Dialect.TEI
    assert dialect_of("/v1/rerank") is Dialect.OPENAI


def test_a_task_the_model_cannot_do_is_424_on_tei_routes_only() -> None:
    error = e.TaskNotSupportedError("model is not a re-ranker")
    tei = error_response(error, "/rerank")
    assert tei.status_code == 424 and orjson.loads(tei.body)["error_type"] == "Backend"
    hf = error_response(error, "/models/m")
    assert hf.status_code == 400 and orjson.loads(hf.body)["error_type"] == "Validation"
    assert error_response(error, "/v1/rerank").status_code == 400
