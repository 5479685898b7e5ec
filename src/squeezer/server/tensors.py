"""Tensors of the Open Inference Protocol (KServe v2), in JSON or with the binary
tensor extension that ``tritonclient.http`` uses by default.

A request body is JSON, or JSON followed by raw tensor bytes when the header
``Inference-Header-Content-Length`` gives the JSON's length; each binary input then
says its size in ``parameters.binary_data_size``, in input order. BYTES elements are
a 4-byte little-endian length and the bytes; numbers are little-endian, row-major.
An answer is binary when the request asked (``binary_data_output``, or an output's
``binary_data``), JSON otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from squeezer.errors import InvalidRequestError

#: KServe v2 datatypes squeezer reads and writes, with their numpy types.
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
HEADER = "inference-header-content-length"


@dataclass(slots=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    #: Output names asked for (None: all) and which of them come back binary.
    outputs: list[str] | None = None
    binary: set[str] = field(default_factory=set)
    binary_all: bool = False


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequestError(f"input {name!r}: a BYTES element's length is cut off")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidRequestError(f"input {name!r}: a BYTES element runs past its data")
        out.append(raw[offset : offset + size])
        offset += size
    return out


def _tensor(spec: dict[str, Any], raw: bytes | None) -> np.ndarray:
    name, datatype = spec.get("name"), spec.get("datatype")
    shape = spec.get("shape")
    if not isinstance(name, str) or not isinstance(shape, list):
        raise InvalidRequestError("every input needs a name, a datatype and a shape")
    try:
        count = int(np.prod(shape)) if shape else 1
    except (TypeError, ValueError):
        raise InvalidRequestError(
            f"input {name!r}: shape {shape!r} is not a list of ints"
        ) from None
    if datatype == "BYTES":
        if raw is not None:
            values: list[Any] = _bytes_elements(raw, name)
        else:
            values = list(np.asarray(spec.get("data", []), dtype=object).ravel())
        texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
        array = np.array(texts, dtype=object)
    elif datatype in DTYPES:
        dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
        try:
            if raw is not None:
                array = np.frombuffer(raw, dtype=dtype)
            else:
                array = np.asarray(spec.get("data", []), dtype=dtype).ravel()
        except (ValueError, TypeError) as e:
            raise InvalidRequestError(f"input {name!r}: data is not {datatype}: {e}") from None
    else:
        known = ", ".join(["BYTES", *DTYPES])
        raise InvalidRequestError(f"input {name!r}: datatype {datatype!r} (one of {known})")
    if array.size != count:
        raise InvalidRequestError(
            f"input {name!r}: shape {shape} holds {count} elements, the data {array.size}"
        )
    return array.reshape(shape)


def decode(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request's tensors (see the module docstring)."""
    json_size = len(body)
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise InvalidRequestError(f"{HEADER}: {header_length!r} is not a number") from None
        if not 0 < json_size <= len(body):
            raise InvalidRequestError(f"{HEADER} {json_size} is past the body ({len(body)} bytes)")
    try:
        data = orjson.loads(body[:json_size])
    except orjson.JSONDecodeError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise InvalidRequestError("expected a JSON object with an 'inputs' list")
    offset = json_size
    inputs: dict[str, np.ndarray] = {}
    for spec in data["inputs"]:
        if not isinstance(spec, dict):
            raise InvalidRequestError("every input is a JSON object")
        size = (spec.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InvalidRequestError(
                    f"input {spec.get('name')!r}: binary data runs past the body"
                )
            raw, offset = body[offset : offset + size], offset + size
        tensor = _tensor(spec, raw)
        inputs[spec["name"]] = tensor
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequestError("'parameters' must be an object")
    outputs = data.get("outputs")
    names, binary = None, set()
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise InvalidRequestError("'outputs' must be a list of objects with a 'name'")
        names = [o["name"] for o in outputs]
        binary = {o["name"] for o in outputs if (o.get("parameters") or {}).get("binary_data")}
    request_id = data.get("id")
    return InferRequest(
        inputs,
        parameters,
        str(request_id) if request_id is not None else None,
        names,
        binary,
        bool(parameters.get("binary_data_output")),
    )


def _datatype(array: np.ndarray) -> str:
    if array.dtype == object:
        return "BYTES"
    for name, dtype in DTYPES.items():
        if array.dtype == np.dtype(dtype):
            return name
    raise ValueError(f"no KServe datatype for {array.dtype}")


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        parts = []
        for value in array.ravel():
            b = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode(
    request: InferRequest, model: str, version: str, outputs: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The answer's body, and its JSON length when binary tensors follow it."""
    chosen = request.outputs if request.outputs is not None else list(outputs)
    unknown = [n for n in chosen if n not in outputs]
    if unknown:
        raise InvalidRequestError(
            f"model {model!r} has no output {unknown[0]!r}; outputs: {', '.join(outputs)}"
        )
    entries, blobs = [], []
    for name in chosen:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _datatype(array),
            "shape": list(array.shape),
        }
        if request.binary_all or name in request.binary:
            raw = _raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif array.dtype == object:
            entry["data"] = [str(v) for v in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        head["id"] = request.id
    header = orjson.dumps(head)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
