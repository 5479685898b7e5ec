"""KServe v2 tensors (server/tensors.py): JSON and the binary extension, both ways."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from squeezer.errors import InvalidRequestError
from squeezer.server.tensors import decode, encode


def _bytes(*texts: str) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_json_and_binary_inputs_decode_alike() -> None:
    as_json = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a", "bé"]}]}
    req = decode(orjson.dumps(as_json), None)
    assert req.inputs["TEXT"].tolist() == ["a", "bé"] and not req.binary_all
    raw = _bytes("a", "bé")
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "TEXT", "datatype": "BYTES", "shape": [2],
                 "parameters": {"binary_data_size": len(raw)}},
                {"name": "X", "datatype": "FP32", "shape": [1, 2],
                 "parameters": {"binary_data_size": 8}},
            ],
            "parameters": {"binary_data_output": True},
        }
    )  # fmt: skip
    body = head + raw + np.array([1.5, -2.0], dtype="<f4").tobytes()
    req = decode(body, str(len(head)))
    assert req.inputs["TEXT"].tolist() == ["a", "bé"] and req.binary_all
    np.testing.assert_array_equal(req.inputs["X"], [[1.5, -2.0]])


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{}", None, "'inputs' list"),
        (b"not json", None, "not valid JSON"),
        (orjson.dumps({"inputs": [{"name": "T", "datatype": "FP32", "shape": [3], "data": [1]}]}),
         None, "holds 3 elements, the data 1"),
        (orjson.dumps({"inputs": [{"name": "T", "datatype": "CPLX", "shape": [1], "data": [1]}]}),
         None, "datatype 'CPLX'"),
        (orjson.dumps({"inputs": [{"name": "T", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": 99}}]}), "110",
         "past the body"),
    ],
)  # fmt: skip
def test_bad_tensors_are_a_clear_4xx(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        decode(body, header)


def test_outputs_come_back_binary_only_when_asked() -> None:
    outputs = {
        "EMBEDDING": np.array([[0.5, 1.0]], dtype=np.float32),
        "LABEL": np.array(["pos"], dtype=object),
    }
    plain = decode(orjson.dumps({"inputs": [], "id": "r1"}), None)
    body, size = encode(plain, "m", "1", outputs)
    answer = orjson.loads(body)
    assert size is None and answer["id"] == "r1" and answer["model_version"] == "1"
    assert answer["outputs"][0] == {
        "name": "EMBEDDING", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.0]
    }  # fmt: skip
    asked = decode(
        orjson.dumps(
            {"inputs": [], "outputs": [{"name": "LABEL", "parameters": {"binary_data": True}}]}
        ),
        None,
    )
    body, size = encode(asked, "m", "1", outputs)
    assert size is not None
    head = orjson.loads(body[:size])
    assert [o["name"] for o in head["outputs"]] == ["LABEL"]
    assert body[size:] == _bytes("pos")
    with pytest.raises(InvalidRequestError, match="no output 'NOPE'"):
        encode(
            decode(orjson.dumps({"inputs": [], "outputs": [{"name": "NOPE"}]}), None),
            "m",
            "1",
            outputs,
        )
