"""Bad input to the KServe v2 routes is a 422 in the protocol's error shape, never a
500; the server keeps answering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import bert_and_llama

_TEXT = [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"dimensions": "abc"}, "dimensions"),
        ({"normalize": "x"}, "normalize"),
        ({"truncate": [1]}, "truncate"),
        ({"truncation_direction": "up"}, "truncation_direction"),
        ({"task": 5}, "task"),
    ],
)
async def test_infer_parameters_are_typed(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, parameters: Any, field: str
) -> None:
    client = await make_async_client(bert_and_llama(tiny_bert, tiny_llama))
    r = await client.post("/v2/models/bert/infer", json={"inputs": _TEXT, "parameters": parameters})
    assert r.status_code == 422 and field in r.json()["error"], r.text
    assert set(r.json()) == {"error"}
    bad_outputs = {"inputs": _TEXT, "outputs": [5]}
    assert (await client.post("/v2/models/bert/infer", json=bad_outputs)).status_code == 422
    ok = await client.post("/v2/models/bert/infer", json={"inputs": _TEXT})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["name"] == "EMBEDDING"


@pytest.mark.parametrize(
    "extra",
    [{"stop": 5}, {"temperature": -1}, {"max_tokens": "x"}, {"seed": "s"}, {"beam_width": 2}],
)
async def test_generate_parameters_are_typed(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, extra: dict[str, Any]
) -> None:
    client = await make_async_client(bert_and_llama(tiny_bert, tiny_llama))
    (field,) = extra
    for body in ({"text_input": "hi", **extra}, {"text_input": "hi", "parameters": extra}):
        r = await client.post("/v2/models/llama/generate", json=body)
        assert r.status_code == 422 and field in r.json()["error"], r.text
    ok = await client.post(
        "/v2/models/llama/generate", json={"text_input": "hi", "max_tokens": 2, "temperature": 0}
    )
    assert ok.status_code == 200 and isinstance(ok.json()["text_output"], str)
