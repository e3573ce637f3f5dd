"""The Open Inference Protocol (KServe V2): inference requests as JSON or binary tensors,
one tensor per column, and the response with ``probability`` and ``label`` outputs."""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlfolio.errors import RequestError
from mlfolio.serve.columns import (
    Batch,
    Column,
    ColumnKind,
    describe,
    expected_columns,
    validate_columns,
)
from mlfolio.serve.protocols import parse_json

if TYPE_CHECKING:
    from mlfolio.serve.model import ServedModel
_V2_NUMPY = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_V2_INTS = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
# Text in a double column is read as a number (blank: missing), integers and booleans in
# a string column as their text, as the JSON protocols do.
_V2_KIND_TYPES = {
    ColumnKind.LONG: _V2_INTS,
    ColumnKind.DOUBLE: ("FP64", "FP32", "FP16", *_V2_INTS, "BYTES"),
    ColumnKind.STRING: ("BYTES", *_V2_INTS, "BOOL"),
    ColumnKind.BOOLEAN: ("BOOL",),
    ColumnKind.ENTITY: ("BYTES", *_V2_INTS),
}
_V2_OUTPUTS = ("probability", "label")


@dataclass
class V2Request:
    block: Batch
    id: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary)


def _deserialize_bytes(raw: bytes, name: str) -> list[str]:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    out, pos = [], 0
    try:
        while pos < len(raw):
            (size,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + size > len(raw):
                raise RequestError(
                    f"input {name!r}: binary BYTES element runs past the end of its data"
                )
            out.append(raw[pos : pos + size].decode("utf-8"))
            pos += size
    except struct.error:
        raise RequestError(f"input {name!r}: truncated binary BYTES data") from None
    except UnicodeDecodeError as exc:
        raise RequestError(f"input {name!r}: BYTES element is not UTF-8: {exc}") from None
    return out


# Parameters the protocol defines for itself, and the JSON type each must have.
_V2_RESERVED_PARAMETERS = {"binary_data_output": bool, "binary_data": bool, "binary_data_size": int}


def v2_parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, input or output: absent or null is empty;
    otherwise an object whose values are booleans, numbers or strings (the protocol's
    ``$parameter``), with binary_data_output/binary_data booleans and binary_data_size a
    count of bytes."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(f"{where}: expected an object of name: value, got {describe(params)}")
    for key, value in params.items():
        kind = _V2_RESERVED_PARAMETERS.get(key)
        if kind is bool and type(value) is not bool:
            raise RequestError(f"{where}.{key}: expected true or false, got {describe(value)}")
        if kind is int and (type(value) is not int or value < 0):
            raise RequestError(
                f"{where}.{key}: expected a number of bytes (an integer >= 0), "
                f"got {describe(value)}"
            )
        if type(value) not in (bool, int, float, str):
            raise RequestError(
                f"{where}.{key}: expected a boolean, number or string, got {describe(value)}"
            )
    return params


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list) and any(isinstance(v, list) for v in data):
        return list(
            itertools.chain.from_iterable(_flatten(v) if isinstance(v, list) else [v] for v in data)
        )
    return data if isinstance(data, list) else [data]


def parse_v2(body: bytes, header_length: str | None, columns: list[Column]) -> V2Request:
    """An inference request (JSON, or a JSON header followed by binary tensors)."""
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise RequestError(
                f"Inference-Header-Content-Length: expected an integer, got {header_length!r}"
            ) from None
        if not 0 < size <= len(body):
            raise RequestError(
                f"Inference-Header-Content-Length {size} does not fit the {len(body)}-byte body"
            )
        head, binary = body[:size], body[size:]
    doc, unicode_ok = parse_json(head, "JSON inference request")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise RequestError(
            "the inference request must be a JSON object with a non-empty 'inputs' list"
        )
    by_name = {c.name: c for c in columns}
    data: dict[str, list[Any]] = {}
    offset = 0
    rows: int | None = None
    for i, tensor in enumerate(doc["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(f"inputs[{i}]: expected an object with 'name', 'shape', 'datatype'")
        name = tensor["name"]
        col = by_name.get(name)
        if col is None:
            raise RequestError(
                f"unknown input {name!r}; the model expects one tensor per "
                f"column: {expected_columns(columns)}"
            )
        if name in data:
            raise RequestError(f"input {name!r} appears twice")
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if datatype not in _V2_KIND_TYPES[col.kind]:
            raise RequestError(
                f"input {name!r}: datatype {datatype!r} does not match the "
                f"column's type {col.kind} (expected one of "
                f"{list(_V2_KIND_TYPES[col.kind])})"
            )
        if (
            not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
            or len(shape) not in (1, 2)
            or (len(shape) == 2 and shape[1] != 1)
        ):
            raise RequestError(f"input {name!r}: shape must be [rows] or [rows, 1], got {shape!r}")
        params = v2_parameters(tensor, f"inputs[{i}].parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise RequestError(
                    f"input {name!r}: binary_data_size {size!r} runs past the end of the body"
                )
            raw = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                values: list[Any] = _deserialize_bytes(raw, name)
            else:
                dtype = np.dtype(_V2_NUMPY[datatype])
                if size % dtype.itemsize:
                    raise RequestError(
                        f"input {name!r}: {size} bytes is not a whole number of {datatype} values"
                    )
                values = np.frombuffer(raw, dtype=dtype).tolist()
        else:
            if "data" not in tensor:
                raise RequestError(f"input {name!r}: no 'data' and no binary_data_size")
            values = _flatten(tensor["data"])
            if datatype in ("FP64", "FP32", "FP16"):
                values = [float(v) if type(v) is int else v for v in values]
        if len(values) != shape[0]:
            raise RequestError(
                f"input {name!r}: shape {shape} says {shape[0]} values, the "
                f"data holds {len(values)}"
            )
        if rows is not None and shape[0] != rows:
            raise RequestError(
                f"input {name!r}: {shape[0]} rows where the other inputs have {rows}"
            )
        rows = shape[0]
        data[name] = values
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    binary_default = v2_parameters(doc, "parameters").get("binary_data_output", False)
    wanted = doc.get("outputs")
    if wanted is None:
        outputs = [(name, binary_default) for name in _V2_OUTPUTS]
    else:
        if not isinstance(wanted, list):
            raise RequestError("'outputs' must be a list of {\"name\": ...} objects")
        outputs = []
        for k, out in enumerate(wanted):
            name = out.get("name") if isinstance(out, dict) else None
            if name not in _V2_OUTPUTS:
                raise RequestError(
                    f"unknown output {name!r}; the model has outputs {list(_V2_OUTPUTS)}"
                )
            params = v2_parameters(out, f"outputs[{k}].parameters")
            outputs.append((name, params.get("binary_data", binary_default)))
    request_id = doc.get("id")
    return V2Request(
        validate_columns(data, columns, "inputs", check_text=not unicode_ok),
        str(request_id) if request_id is not None else None,
        outputs,
    )


def v2_response(
    model: ServedModel,
    request: V2Request,
    proba: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    model_version: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The inference response, with binary outputs appended after the JSON header.

    ``labels`` (default: ``model``'s threshold) and ``model_version`` let an A/B-routed
    request answer with the labels and version of the variants that scored it.
    """
    score = np.ascontiguousarray(proba[:, 1], dtype="<f8")
    label = (score >= model.threshold if labels is None else labels).astype("<i8")
    arrays = {"probability": ("FP64", score), "label": ("INT64", label)}
    outputs, blobs = [], []
    for name, binary in request.outputs:
        datatype, values = arrays[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if binary:
            blob = values.tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = values.tolist()
        outputs.append(out)
    doc: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model_version or model.version,
        "outputs": outputs,
    }
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = parameters
    head = json.dumps(doc).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
