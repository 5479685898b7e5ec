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
    [
        {"stop": 5},
        {"temperature": -1},
        {"max_tokens": "x"},
        {"seed": "s"},
        {"beam_width": 2},
        {"min_p": 2},
        {"stop_token_ids": ["a"]},
    ],
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


async def test_generate_takes_vllms_sampling_parameters(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path
) -> None:
    """Triton's vLLM backend passes vLLM's sampling fields as parameters; so does
    squeezer: a stop token id ends the text unless min_tokens holds it back."""
    client = await make_async_client(bert_and_llama(tiny_bert, tiny_llama))
    tgi = {"max_new_tokens": 6, "details": True, "ignore_eos": True}
    greedy = await client.post("/generate", json={"inputs": "hi", "parameters": tgi})
    tokens = greedy.json()["details"]["tokens"]
    base = {"text_input": "hi", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    params = {"presence_penalty": 0.5, "frequency_penalty": 0.5, "min_p": 0.1, "seed": 1}
    r = await client.post("/v2/models/llama/generate", json={**base, "parameters": params})
    assert r.status_code == 200, r.text
    ids = [t["id"] for t in tokens]
    at = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # its first time
    stop = {"stop_token_ids": [ids[at]], "include_stop_str_in_output": True}
    stopped = await client.post("/v2/models/llama/generate", json={**base, "parameters": stop})
    assert stopped.json()["text_output"] == "".join(t["text"] for t in tokens[: at + 1])
    held = {**stop, "min_tokens": at + 1}  # the stop id is banned where it came
    late = await client.post("/v2/models/llama/generate", json={**base, "parameters": held})
    assert late.status_code == 200 and late.json()["text_output"] != stopped.json()["text_output"]
