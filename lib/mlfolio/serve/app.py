"""The model server: one FastAPI/uvicorn app for a registered model, four protocols.

``mlfolio serve --model models:/churn-classifier@champion`` resolves the alias to a version
once, loads that version and answers on http://127.0.0.1:8080:

- **MLflow scoring protocol** — ``POST /invocations`` with ``dataframe_split``,
  ``dataframe_records``, ``instances`` or ``inputs`` JSON, or a ``text/csv`` body. The answer
  is ``mlflow models serve``'s (``{"predictions": [[p_negative, p_positive], ...]}``) plus two
  keys its clients ignore: ``labels`` (1 where ``p_positive >= threshold``) and ``threshold``
  (the model version's ``mlfolio.threshold`` tag, set by the evaluate stage; 0.5 without it).
- **SageMaker container contract** — ``GET /ping`` and ``POST /invocations`` on port 8080
  (``text/csv`` with or without a header row, or JSON; ``Accept: text/csv`` answers one
  ``probability,label`` line per row).
- **Open Inference Protocol (KServe V2)** — ``/v2``, ``/v2/health/{live,ready}``,
  ``/v2/models/{name}[/versions/{v}][/ready|/infer]``. Inputs are one tensor per column
  (BYTES for text, INT64/FP64 for numbers), as JSON or binary tensors; outputs are
  ``probability`` (FP64) and ``label`` (INT64). Errors are ``{"error": "..."}``.
- ``GET /metrics`` (Prometheus) and ``GET /health`` (model name, version, alias, run id and
  the hash of the data it was trained on).

Input is checked against the model signature before it reaches the model: a missing or
unknown column, or a value of the wrong type, is refused with a 400 whose message names the
column (and row); a body over ``max_body_bytes`` with a 413. Bad input never reaches
``predict_proba``, and an exception there fails only the request that caused it.

Authentication: with a token (``--token`` or ``$MLFOLIO_SERVE_TOKEN``) every route needs
``Authorization: Bearer <token>`` except the liveness/readiness probes ``/ping``,
``/v2/health/live`` and ``/v2/health/ready``: they carry no data, and load balancers,
SageMaker and Kubernetes call them without credentials. ``/health`` (run id, data hash) and
``/metrics`` stay protected; Prometheus sends a bearer token with ``authorization:``.

Speed: concurrent requests are scored together. Requests queue while a batch is being
scored; when it is done, everything that arrived meanwhile becomes the next batch — one
``predict_proba`` call in a worker thread, each caller getting its own slice back. Nothing
waits for a batch to fill, so a lone request is scored at once. mlfolio's own pipelines
(:func:`mlfolio.features.build_model_pipeline`) are also *compiled*: the coercion,
imputation, scaling and one-hot steps become a few NumPy operations on the request's values
(no DataFrame, no ColumnTransformer), and the fitted estimator's own ``predict_proba`` runs
on the result. At load the compiled features are checked against the pipeline's, value for
value, on the model's input example and on a row for every known category; any difference,
or a pipeline of another shape, and the server scores through the pipeline itself
(``/health`` says which: ``"scorer": "compiled"`` or ``"pipeline"``).

Prediction log, A/B and shadow: ``--prediction-log DIR`` records every scored row
(:mod:`mlfolio.predlog`), handed over by the scoring thread, written by the log's own thread.
Every scoring answer carries an ``X-Request-ID`` header (the client's, else a new one; also
``"request_id"`` in the /invocations body). ``--entity-column`` names an input column of
entity ids: accepted by every protocol, logged, used for routing, never scored.
``--challenger URI`` loads a second model with its own scorer and batcher:
``--challenger-weight W`` routes a row to it when ``route_share(salt, entity) < W`` (sticky
per entity; a split request is scored as two blocks and put back in order; ``"variants"``
per row in the answer), ``--shadow`` scores every row on it too, logs that with shadow=1 and
answers with the champion, without waiting for it. ``/metrics`` adds rows per variant, the
log's written/dropped rows and, from ``DIR/drift.json``, the monitor's drift gauges.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import os
import queue
import re
import socket
import sqlite3
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlfolio.errors import NotCompilable, RequestError, ServeError
from mlfolio.features import MISSING_CATEGORY, RawColumnCoercer
from mlfolio.predlog import PredictionLog

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THRESHOLD = 0.5
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_BATCH_ROWS = 4096
TOKEN_ENV = "MLFOLIO_SERVE_TOKEN"
OPEN_ROUTES = frozenset({"/ping", "/v2/health/live", "/v2/health/ready"})
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_PARSE_IN_THREAD_BYTES = 256 * 1024  # bigger bodies are parsed off the event loop
# Request bodies being received or processed at once, in bytes: a parsed JSON body takes
# ~15x its size in Python objects (16 parallel 10 MB bodies reached 1.6 GB), so this is
# the server's memory bound for request data.
MAX_INFLIGHT_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 32  # every protocol here needs 5 levels at most
_INT64 = (-(2**63), 2**63 - 1)


_MLFLOW_ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST",
                       405: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE",
                       415: "UNSUPPORTED_MEDIA_TYPE", 503: "TEMPORARILY_UNAVAILABLE",
                       500: "INTERNAL_ERROR"}


def error_body(path: str, status: int, message: str) -> bytes:
    """``{"error": ...}`` under /v2 (Open Inference Protocol), MLflow's REST error elsewhere."""
    if path.startswith("/v2"):
        return json.dumps({"error": message}).encode()
    code = _MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST")
    return json.dumps({"error_code": code, "message": message}).encode()


# -- the model's columns --------------------------------------------------------------
_SIGNATURE_KINDS = {"integer": "long", "long": "long", "float": "double", "double": "double",
                    "string": "string", "boolean": "boolean"}


@dataclass(frozen=True)
class Column:
    """One input column of the model signature.

    ``kind`` is long, double, string or boolean. A double column takes numbers, numeric
    text and blank text (a missing value), read as the pipeline's coercer reads them; a
    string column takes text, and integers and booleans as their text (a 0/1 flag). The
    entity column (the schema's id column, or ``--entity-column``) is an ``optional``
    column of kind ``entity`` (text or integer ids), taken out of the rows before they are
    scored. ``numeric_text`` marks a string column the model reads as a number (blank =
    missing): ``totalcharges`` in models logged before signatures followed the schema.
    """

    name: str
    kind: str
    numeric_text: bool = False
    optional: bool = False


def columns_from_signature(signature: Any, numeric: Iterable[str] = ()) -> list[Column]:
    """The model's input columns from its MLflow signature (a column-based schema)."""
    if signature is None or signature.inputs is None:
        raise ServeError("the model has no input signature; log it with mlfolio.tracking."
                         "log_model, which records one")
    if not signature.inputs.has_input_names() or signature.inputs.is_tensor_spec():
        raise ServeError("the model's input signature is not a list of named columns")
    numeric = set(numeric)
    out = []
    for spec in signature.inputs.inputs:
        type_name = getattr(spec.type, "name", str(spec.type))
        kind = _SIGNATURE_KINDS.get(type_name)
        if kind is None:
            raise ServeError(f"column {spec.name!r}: signature type {type_name!r} is not "
                             f"supported (expected one of {sorted(_SIGNATURE_KINDS)})")
        out.append(Column(spec.name, kind, kind == "string" and spec.name in numeric))
    return out


def model_id_column(meta: Any) -> str | None:
    """The schema's id column recorded at log time (MLmodel metadata), if any."""
    recorded = (getattr(meta, "metadata", None) or {}).get("mlfolio") or {}
    name = recorded.get("id_column") if isinstance(recorded, dict) else None
    return name if isinstance(name, str) and name else None


# -- request values -------------------------------------------------------------------
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number_text(text: str) -> bool:
    """Text the model's coercion reads as a number, or blank (a missing value)."""
    stripped = text.strip()
    if not stripped:
        return True
    if "_" in stripped or not stripped.isascii():
        return False
    try:
        return math.isfinite(float(stripped)) or stripped.lower() in ("nan", "-nan", "+nan")
    except ValueError:
        return False


def _number_from_text(text: str) -> float | None:
    """Numeric text as the coercer reads it (strip, pandas.to_numeric); blank → None."""
    stripped = text.strip()
    if not stripped:
        return None
    if len(stripped) <= 17 and _PLAIN_DECIMAL.fullmatch(stripped) \
            and sum(c.isdigit() for c in stripped) <= 15:  # _text_to_float's fast path
        return float(stripped)
    return float(_text_to_float([stripped])[0])


def _category_text(v: Any) -> Any:
    """An int, bool or finite float in a string column as the coercer's text (``0.0`` →
    ``"0"``); anything else is returned as is, for the caller to refuse."""
    t = type(v)
    if t is int or t is bool:
        return str(v)
    if t is float and math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    return v


def check_values(col: Column, values: list[Any], where: str = "") -> list[Any]:
    """Values of one column checked against its signature type; null means missing.

    Returns the values with lossless normalisations (``1.0`` in a long column becomes
    ``1``, numeric text in a double column its number, blank text None, a 0/1 flag in a
    string column its text); raises RequestError naming the column, the row and what was
    expected.
    """
    at = f" ({where})" if where else ""
    kind = col.kind
    out = values
    if kind == "string":
        for i, v in enumerate(values):
            if v is None or type(v) is str:
                continue
            t = type(v)
            if t is float and v != v:
                text = None  # NaN: missing
            elif col.numeric_text:
                text = (str(v) if t is int else repr(v)) if t in (int, float) and \
                    math.isfinite(v) else v
            else:
                text = _category_text(v)
            if text is not None and type(text) is not str:
                expected = "a number or numeric text" if col.numeric_text else \
                    "a string (or an integer or boolean, read as its text)"
                raise RequestError(f"column {col.name!r}: expected {expected} (signature "
                                   f"type string), got {_describe(v)} in row {i}{at}")
            if out is values:
                out = list(values)
            out[i] = text
        if col.numeric_text:
            for i, v in enumerate(out):
                if v is not None and not _is_number_text(v):
                    raise RequestError(f"column {col.name!r}: expected a number written as "
                                       f"text, or blank for missing, got {_describe(v)} in "
                                       f"row {i}{at}")
    elif kind == "long":
        for i, v in enumerate(values):
            t = type(v)
            if t is int:
                if not _INT64[0] <= v <= _INT64[1]:
                    raise RequestError(f"column {col.name!r}: {v} in row {i}{at} does not "
                                       "fit a 64-bit integer")
            elif v is None:
                continue
            elif t is float and v.is_integer():
                if out is values:
                    out = list(values)
                out[i] = int(v)
            else:
                raise RequestError(f"column {col.name!r}: expected an integer (signature "
                                   f"type long), got {_describe(v)} in row {i}{at}")
    elif kind == "double":
        for i, v in enumerate(values):
            t = type(v)
            if t is float:
                if math.isinf(v):
                    raise RequestError(f"column {col.name!r}: expected a finite number, got "
                                       f"{v} in row {i}{at}")
            elif t is str and _is_number_text(v):  # blank is missing, as in training
                if out is values:
                    out = list(values)
                out[i] = _number_from_text(v)
            elif t is not int and v is not None:
                raise RequestError(f"column {col.name!r}: expected a number (signature type "
                                   f"double; numeric text is read as a number, blank text "
                                   f"as missing), got {_describe(v)} in row {i}{at}")
    elif kind == "boolean":
        for i, v in enumerate(values):
            if v is not None and type(v) is not bool:
                raise RequestError(f"column {col.name!r}: expected true or false (signature "
                                   f"type boolean), got {_describe(v)} in row {i}{at}")
    elif kind == "entity":
        for i, v in enumerate(values):
            if v is not None and type(v) is not str and type(v) is not int:
                raise RequestError(f"column {col.name!r} (the entity id): expected a string "
                                   f"or an integer, got {_describe(v)} in row {i}{at}")
    return out


def _from_text(col: Column, values: list[str], where: str) -> list[Any]:
    """CSV fields to typed values: an empty field is a missing value."""
    out: list[Any] = []
    for i, text in enumerate(values):
        if text == "":
            out.append(None)
            continue
        if col.kind in ("string", "entity", "double"):  # double: check_values reads it
            out.append(text)
            continue
        stripped = text.strip()
        try:
            if col.kind == "long":
                try:
                    out.append(int(stripped))
                except ValueError:
                    number = float(stripped)
                    if not number.is_integer():
                        raise
                    out.append(int(number))
            else:
                flag = {"true": True, "1": True, "false": False, "0": False}[stripped.lower()]
                out.append(flag)
        except (ValueError, KeyError, OverflowError):
            expected = {"long": "an integer", "double": "a number",
                        "boolean": "true or false"}[col.kind]
            raise RequestError(f"column {col.name!r}: expected {expected} (signature type "
                               f"{col.kind}), got {_describe(text)} in row {i} ({where})"
                               ) from None
    return check_values(col, out, where)


@dataclass
class Block:
    """Rows of one request, column by column, checked against the signature."""

    n: int
    columns: dict[str, list[Any]]


def _expected(columns: list[Column]) -> str:
    """The columns a request may carry, for error messages."""
    required = [c.name for c in columns if not c.optional]
    optional = [c.name for c in columns if c.optional]
    return f"{required}" + (f" and optionally the entity id {optional[0]!r}" if optional
                            else "")


def validate_columns(data: dict[str, list[Any]], columns: list[Column], where: str) -> Block:
    """Exactly the signature's columns, of equal length, each value of the column's type."""
    expected = {c.name for c in columns}
    unknown = [name for name in data if name not in expected]
    if unknown:
        raise RequestError(f"unknown column(s) {unknown} in {where}; the model expects "
                           f"{_expected(columns)}")
    missing = [c.name for c in columns if c.name not in data and not c.optional]
    if missing:
        raise RequestError(f"missing column(s) {missing} in {where}")
    lengths = {len(v) for v in data.values()}
    if len(lengths) != 1:
        sizes = {name: len(v) for name, v in data.items()}
        raise RequestError(f"columns of different lengths in {where}: {sizes}")
    n = lengths.pop()
    if n == 0:
        raise RequestError(f"no rows in {where}")
    return Block(n, {c.name: check_values(c, data[c.name], where) for c in columns
                     if c.name in data})


def _records_to_columns(records: list[Any], columns: list[Column], where: str
                        ) -> dict[str, list[Any]]:
    names = [c.name for c in columns if not c.optional]
    optional = [c.name for c in columns if c.optional]
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RequestError(f"{where}[{i}]: expected an object of column: value, got "
                               f"{_describe(rec)}")
    try:
        data = {name: [rec[name] for rec in records] for name in names}
    except KeyError as exc:
        name = exc.args[0]
        row = next(i for i, rec in enumerate(records) if name not in rec)
        raise RequestError(f"missing column {name!r} in {where}[{row}]") from None
    extra = 0
    for name in optional:  # an entity id may be given for some records only
        values = [rec.get(name) for rec in records]
        if any(name in rec for rec in records):
            data[name] = values
            extra += 1
    for i, rec in enumerate(records):
        if len(rec) != len(names) and (not extra or any(k not in data for k in rec)):
            unknown = [k for k in rec if k not in data]
            raise RequestError(f"unknown column(s) {unknown} in {where}[{i}]; the model "
                               f"expects {_expected(columns)}")
    return data


_JSON_STEP = np.zeros(256, dtype=np.int8)
_JSON_STEP[[ord("["), ord("{")]] = 1
_JSON_STEP[[ord("]"), ord("}")]] = -1
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_JSON_NOT_MARK = bytes(c for c in range(256) if c not in b'"[]{}')


def json_depth(body: bytes) -> int:
    """How deep ``body``'s arrays and objects nest, without parsing it (C-speed passes).

    Escapes are dropped, then everything but quotes and brackets; adjacent quotes go too
    (an empty string, or the boundary of two strings): that keeps every bracket's side of
    the quotes, and leaves no quotes at all unless a string holds a bracket.
    """
    if b"\\" in body:
        body = _JSON_ESCAPE.sub(b"", body)
    marks = np.frombuffer(body.translate(None, _JSON_NOT_MARK).replace(b'""', b""),
                          dtype=np.uint8)
    step = _JSON_STEP[marks].astype(np.int32)
    if (marks == 34).any():
        step[(np.cumsum(marks == 34) & 1) == 1] = 0  # inside a string
    return int(np.cumsum(step).max(initial=0))


def load_json(body: bytes, what: str) -> Any:
    """``json.loads`` for request bodies: malformed or nested deeper than MAX_JSON_DEPTH
    (which would exhaust the parser's recursion and fail as a server error) is a 400."""
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH \
            and json_depth(body) > MAX_JSON_DEPTH:
        raise RequestError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels (arrays and "
                           "objects); the scoring protocols need 5 at most")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed {what}: {exc}") from None


def parse_mlflow_json(body: bytes, columns: list[Column]) -> Block:
    """An MLflow scoring-protocol JSON body (any of the four formats) → checked rows."""
    doc = load_json(body, "JSON body")
    if not isinstance(doc, dict):
        raise RequestError(f"the body must be a JSON object with one of the keys "
                           f"{list(MLFLOW_FORMATS)}, got {_describe(doc)}")
    keys = [k for k in MLFLOW_FORMATS if k in doc]
    if len(keys) != 1:
        raise RequestError(f"the body must have exactly one of the keys {list(MLFLOW_FORMATS)}"
                           f", got keys {sorted(doc)}")
    key = keys[0]
    payload = doc[key]
    if key == "dataframe_split":
        if not isinstance(payload, dict) or not isinstance(payload.get("columns"), list) \
                or not isinstance(payload.get("data"), list):
            raise RequestError("dataframe_split: expected an object with 'columns' (a list of "
                               "column names) and 'data' (a list of rows)")
        names = payload["columns"]
        if len(set(map(str, names))) != len(names) or not all(isinstance(n, str)
                                                              for n in names):
            raise RequestError(f"dataframe_split.columns: expected distinct column names, got "
                               f"{names}")
        rows = payload["data"]
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(names):
                got = f"{len(row)} values" if isinstance(row, list) else _describe(row)
                raise RequestError(f"dataframe_split.data[{i}]: expected a list of "
                                   f"{len(names)} values (one per column), got {got}")
        data = {name: [row[j] for row in rows] for j, name in enumerate(names)}
        return validate_columns(data, columns, key)
    if isinstance(payload, list):
        return validate_columns(_records_to_columns(payload, columns, key), columns, key)
    if isinstance(payload, dict):
        if all(isinstance(v, list) for v in payload.values()):
            return validate_columns(dict(payload), columns, key)
        if not any(isinstance(v, list | dict) for v in payload.values()):
            return validate_columns({k: [v] for k, v in payload.items()}, columns, key)
        raise RequestError(f"{key}: expected lists of values per column, or one value per "
                           "column")
    raise RequestError(f"{key}: expected a list of records or an object of columns, got "
                       f"{_describe(payload)}")


def parse_csv(body: bytes, columns: list[Column]) -> Block:
    """A CSV body → checked rows. With a header row naming columns in any order, or, as
    SageMaker's built-in containers send it, without one: values in signature order."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the CSV body is not UTF-8: {exc}") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:
        raise RequestError(f"malformed CSV body: {exc}") from None
    if not rows:
        raise RequestError("empty CSV body: expected a header row and data rows")
    names = [c.name for c in columns]
    required = [c.name for c in columns if not c.optional]
    first = [h.strip() for h in rows[0]]
    if any(h in names for h in first):
        header, data_rows = first, rows[1:]
        if len(set(header)) != len(header):
            raise RequestError(f"CSV header: duplicate column names in {header}")
    elif len(first) in (len(names), len(required)):  # the entity id, if any, comes last
        header, data_rows = (names if len(first) == len(names) else required), rows
    else:
        raise RequestError(f"CSV: the first row names none of the model's columns {names} and "
                           f"is not a row of {len(names)} values either ({len(first)} values)")
    for i, row in enumerate(data_rows):
        if len(row) != len(header):
            raise RequestError(f"CSV row {i}: expected {len(header)} values (one per column), "
                               f"got {len(row)}")
    by_name = {c.name: c for c in columns}
    unknown = [h for h in header if h not in by_name]
    if unknown:
        raise RequestError(f"unknown column(s) {unknown} in the CSV header; the model expects "
                           f"{_expected(columns)}")
    data = {h: _from_text(by_name[h], [row[j] for row in data_rows], "CSV")
            for j, h in enumerate(header)}
    return validate_columns(data, columns, "CSV")


# -- Open Inference Protocol (KServe V2) ----------------------------------------------
_V2_NUMPY = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
             "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
             "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_V2_INTS = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
# Text in a double column is read as a number (blank: missing), integers and booleans in
# a string column as their text, as the JSON protocols do.
_V2_KIND_TYPES = {"long": _V2_INTS, "double": ("FP64", "FP32", "FP16", *_V2_INTS, "BYTES"),
                  "string": ("BYTES", *_V2_INTS, "BOOL"), "boolean": ("BOOL",),
                  "entity": ("BYTES", *_V2_INTS)}
_V2_OUTPUTS = ("probability", "label")


@dataclass
class V2Request:
    block: Block
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
                raise RequestError(f"input {name!r}: binary BYTES element runs past the end of "
                                   "its data")
            out.append(raw[pos:pos + size].decode("utf-8"))
            pos += size
    except struct.error:
        raise RequestError(f"input {name!r}: truncated binary BYTES data") from None
    except UnicodeDecodeError as exc:
        raise RequestError(f"input {name!r}: BYTES element is not UTF-8: {exc}") from None
    return out


# Parameters the protocol defines for itself, and the JSON type each must have.
_V2_RESERVED_PARAMETERS = {"binary_data_output": bool, "binary_data": bool,
                           "binary_data_size": int}


def v2_parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, input or output: absent or null is empty;
    otherwise an object whose values are booleans, numbers or strings (the protocol's
    ``$parameter``), with binary_data_output/binary_data booleans and binary_data_size a
    count of bytes."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(f"{where}: expected an object of name: value, got "
                           f"{_describe(params)}")
    for key, value in params.items():
        kind = _V2_RESERVED_PARAMETERS.get(key)
        if kind is bool and type(value) is not bool:
            raise RequestError(f"{where}.{key}: expected true or false, got {_describe(value)}")
        if kind is int and (type(value) is not int or value < 0):
            raise RequestError(f"{where}.{key}: expected a number of bytes (an integer >= 0), "
                               f"got {_describe(value)}")
        if type(value) not in (bool, int, float, str):
            raise RequestError(f"{where}.{key}: expected a boolean, number or string, got "
                               f"{_describe(value)}")
    return params


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list) and any(isinstance(v, list) for v in data):
        return list(itertools.chain.from_iterable(
            _flatten(v) if isinstance(v, list) else [v] for v in data))
    return data if isinstance(data, list) else [data]


def parse_v2(body: bytes, header_length: str | None, columns: list[Column]) -> V2Request:
    """An inference request (JSON, or a JSON header followed by binary tensors)."""
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise RequestError(f"Inference-Header-Content-Length: expected an integer, got "
                               f"{header_length!r}") from None
        if not 0 < size <= len(body):
            raise RequestError(f"Inference-Header-Content-Length {size} does not fit the "
                               f"{len(body)}-byte body")
        head, binary = body[:size], body[size:]
    doc = load_json(head, "JSON inference request")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) \
            or not doc["inputs"]:
        raise RequestError("the inference request must be a JSON object with a non-empty "
                           "'inputs' list")
    by_name = {c.name: c for c in columns}
    data: dict[str, list[Any]] = {}
    offset = 0
    rows: int | None = None
    for i, tensor in enumerate(doc["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(f"inputs[{i}]: expected an object with 'name', 'shape', "
                               "'datatype'")
        name = tensor["name"]
        col = by_name.get(name)
        if col is None:
            raise RequestError(f"unknown input {name!r}; the model expects one tensor per "
                               f"column: {_expected(columns)}")
        if name in data:
            raise RequestError(f"input {name!r} appears twice")
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if datatype not in _V2_KIND_TYPES[col.kind]:
            raise RequestError(f"input {name!r}: datatype {datatype!r} does not match the "
                               f"column's type {col.kind} (expected one of "
                               f"{list(_V2_KIND_TYPES[col.kind])})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) \
                or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestError(f"input {name!r}: shape must be [rows] or [rows, 1], got "
                               f"{shape!r}")
        params = v2_parameters(tensor, f"inputs[{i}].parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise RequestError(f"input {name!r}: binary_data_size {size!r} runs past the "
                                   "end of the body")
            raw = binary[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                values: list[Any] = _deserialize_bytes(raw, name)
            else:
                dtype = np.dtype(_V2_NUMPY[datatype])
                if size % dtype.itemsize:
                    raise RequestError(f"input {name!r}: {size} bytes is not a whole number "
                                       f"of {datatype} values")
                values = np.frombuffer(raw, dtype=dtype).tolist()
        else:
            if "data" not in tensor:
                raise RequestError(f"input {name!r}: no 'data' and no binary_data_size")
            values = _flatten(tensor["data"])
            if datatype in ("FP64", "FP32", "FP16"):
                values = [float(v) if type(v) is int else v for v in values]
        if len(values) != shape[0]:
            raise RequestError(f"input {name!r}: shape {shape} says {shape[0]} values, the "
                               f"data holds {len(values)}")
        if rows is not None and shape[0] != rows:
            raise RequestError(f"input {name!r}: {shape[0]} rows where the other inputs have "
                               f"{rows}")
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
                raise RequestError(f"unknown output {name!r}; the model has outputs "
                                   f"{list(_V2_OUTPUTS)}")
            params = v2_parameters(out, f"outputs[{k}].parameters")
            outputs.append((name, params.get("binary_data", binary_default)))
    request_id = doc.get("id")
    return V2Request(validate_columns(data, columns, "inputs"),
                     str(request_id) if request_id is not None else None, outputs)


def v2_response(model: ServedModel, request: V2Request, proba: np.ndarray, *,
                labels: np.ndarray | None = None, model_version: str | None = None,
                parameters: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
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
    doc: dict[str, Any] = {"model_name": model.name,
                           "model_version": model_version or model.version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = parameters
    head = json.dumps(doc).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(head))}


# -- scoring --------------------------------------------------------------------------
# Plain decimals of at most 15 digits: float() and pandas.to_numeric agree on these (an
# exact integer mantissa below 2**53 scaled by an exact power of ten, rounded once), while
# to_numeric is not correctly rounded for longer ones. Anything else goes through pandas.
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


def _text_to_float(values: list[Any]) -> np.ndarray:
    """RawColumnCoercer's numbers from text (strip, to_numeric, errors → NaN), exactly."""
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        if value is None:
            out[i] = math.nan
            continue
        text = value.strip()
        if not text:
            out[i] = math.nan
        elif len(text) <= 17 and _PLAIN_DECIMAL.fullmatch(text) \
                and sum(c.isdigit() for c in text) <= 15:
            out[i] = float(text)
        else:
            series = pd.Series(values, dtype=object).astype("string").str.strip()
            return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()
    return out


def _float_column(col: Column, values: list[Any]) -> np.ndarray:
    """A numeric feature as RawColumnCoercer makes it: floats, missing as NaN."""
    if col.kind == "string":
        return _text_to_float(values)
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _category(value: Any) -> str:
    """A categorical value as RawColumnCoercer makes it: text, missing as __missing__."""
    if value is None or (type(value) is float and value != value):
        return MISSING_CATEGORY
    return str(value)


class PipelineScorer:
    """Scores through the fitted pipeline: one DataFrame per batch, column dtypes fixed by
    the signature so that a row's answer never depends on the rows batched with it."""

    name = "pipeline"

    def __init__(self, model: Any, columns: list[Column]):
        self.model = model
        self.columns = columns

    def frame(self, cols: dict[str, list[Any]]) -> pd.DataFrame:
        data: dict[str, np.ndarray] = {}
        for col in self.columns:
            values = cols[col.name]
            if col.kind == "double":
                data[col.name] = np.array([math.nan if v is None else v for v in values],
                                          dtype=np.float64)
            elif col.kind in ("long", "boolean") and None not in values:
                data[col.name] = np.array(values, dtype=np.int64 if col.kind == "long"
                                          else np.bool_)
            else:
                array = np.empty(len(values), dtype=object)
                array[:] = values
                data[col.name] = array
        return pd.DataFrame(data)

    def predict_proba(self, cols: dict[str, list[Any]], n: int) -> np.ndarray:
        return np.asarray(self.model.predict_proba(self.frame(cols)))


def _steps(obj: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if isinstance(obj, Pipeline):
        return [s for _, step in obj.steps if step not in (None, "passthrough")
                for s in _steps(step)]
    return [obj]


class CompiledScorer:
    """mlfolio's feature pipeline as NumPy operations, then the estimator's predict_proba.

    Knows RawColumnCoercer → ColumnTransformer(numeric: SimpleImputer/StandardScaler steps,
    categorical: OneHotEncoder) → any estimator with ``predict_proba``; raises NotCompilable
    for anything else. The feature matrix is built with the same float64 operations the
    fitted transformers apply (:func:`verify` checks it), without pandas or sklearn's
    per-call validation; a binary LogisticRegression is applied the same way, any other
    estimator through its own ``predict_proba``: ~0.1 ms instead of ~9 ms for one row.
    """

    name = "compiled"

    def __init__(self, model: Any, columns: list[Column]):
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        steps = _steps(model)
        if len(steps) != 3 or not isinstance(steps[0], RawColumnCoercer) \
                or not isinstance(steps[1], ColumnTransformer) \
                or not hasattr(steps[2], "predict_proba"):
            raise NotCompilable("not RawColumnCoercer → ColumnTransformer → estimator")
        coercer, ct, self.estimator = steps
        if getattr(ct, "sparse_output_", False):
            raise NotCompilable("the ColumnTransformer's output is sparse")
        by_name = {c.name: c for c in columns}
        numeric, categorical = list(coercer.numeric or []), list(coercer.categorical or [])
        if any(c not in by_name for c in numeric + categorical):
            raise NotCompilable("the coercer reads columns the signature lacks")
        self.columns = columns
        self.width = max(s.stop for s in ct.output_indices_.values())
        # numeric parts: (columns, output slice, ops); one-hot parts: (columns, maps, ignore)
        self.numeric_parts: list[tuple[list[Column], slice, list[tuple[str, Any, Any]]]] = []
        self.onehot_parts: list[tuple[list[Column], list[dict[str, int]], bool]] = []
        covered = 0
        for name, trans, cols in ct.transformers_:
            out = ct.output_indices_[name]
            if (isinstance(trans, str) and trans == "drop") or out.start == out.stop:
                continue
            if isinstance(trans, str) or not isinstance(cols, list) \
                    or not all(isinstance(c, str) for c in cols):
                raise NotCompilable(f"transformer {name!r}: {trans!r} on {cols!r}")
            sub = _steps(trans)
            if all(c in numeric for c in cols):
                ops: list[tuple[str, Any, Any]] = []
                for step in sub:
                    if isinstance(step, SimpleImputer):
                        mv = step.missing_values
                        if step.add_indicator or not (isinstance(mv, float) and math.isnan(mv)) \
                                or not np.all(np.isfinite(step.statistics_)):
                            raise NotCompilable(f"transformer {name!r}: imputer settings")
                        ops.append(("impute", np.asarray(step.statistics_, np.float64), None))
                    elif isinstance(step, StandardScaler):
                        ops.append(("scale", step.mean_ if step.with_mean else None,
                                    step.scale_ if step.with_std else None))
                    else:
                        raise NotCompilable(f"transformer {name!r}: {type(step).__name__}")
                if out.stop - out.start != len(cols):
                    raise NotCompilable(f"transformer {name!r}: output width")
                self.numeric_parts.append(([by_name[c] for c in cols], out, ops))
            elif all(c in categorical for c in cols) and len(sub) == 1 \
                    and isinstance(sub[0], OneHotEncoder):
                enc = sub[0]
                if enc.drop is not None or getattr(enc, "_infrequent_enabled", False) \
                        or np.dtype(enc.dtype) != np.float64 \
                        or enc.handle_unknown not in ("ignore", "infrequent_if_exist", "error"):
                    raise NotCompilable(f"transformer {name!r}: encoder settings")
                maps, pos = [], out.start
                for cats in enc.categories_:
                    if not all(type(c) is str for c in cats):
                        raise NotCompilable(f"transformer {name!r}: non-text categories")
                    maps.append({c: pos + k for k, c in enumerate(cats)})
                    pos += len(cats)
                if pos != out.stop:
                    raise NotCompilable(f"transformer {name!r}: output width")
                self.onehot_parts.append(([by_name[c] for c in cols], maps,
                                          enc.handle_unknown != "error"))
            else:
                raise NotCompilable(f"transformer {name!r}: {type(trans).__name__} on "
                                    f"{cols}")
            covered += out.stop - out.start
        if covered != self.width:
            raise NotCompilable("the transformers' outputs do not tile the feature matrix")
        try:
            self._proba: Callable[[np.ndarray], np.ndarray] = _BinaryLogistic(
                self.estimator, self.width)
        except NotCompilable:
            self._proba = self.estimator.predict_proba

    def transform(self, cols: dict[str, list[Any]], n: int) -> np.ndarray:
        Z = np.zeros((n, self.width), dtype=np.float64)
        for part_cols, out, ops in self.numeric_parts:
            X = np.empty((n, len(part_cols)), dtype=np.float64)
            for j, col in enumerate(part_cols):
                X[:, j] = _float_column(col, cols[col.name])
            if np.isinf(X).any():
                j = int(np.nonzero(np.isinf(X).any(axis=0))[0][0])
                raise RequestError(f"column {part_cols[j].name!r}: infinite value")
            for op, a, b in ops:
                if op == "impute":
                    mask = np.isnan(X)
                    if mask.any():
                        X[mask] = a[np.nonzero(mask)[1]]
                else:
                    if a is not None:
                        X -= a
                    if b is not None:
                        X /= b
            Z[:, out] = X
        rows: list[int] = []
        hits: list[int] = []
        for part_cols, maps, ignore in self.onehot_parts:
            for col, mapping in zip(part_cols, maps, strict=True):
                get = mapping.get
                for i, value in enumerate(cols[col.name]):
                    k = get(_category(value))
                    if k is not None:
                        rows.append(i)
                        hits.append(k)
                    elif not ignore:
                        raise RequestError(f"column {col.name!r}: unknown category "
                                           f"{_describe(value)} in row {i}")
        Z[rows, hits] = 1.0
        return Z

    def predict_proba(self, cols: dict[str, list[Any]], n: int) -> np.ndarray:
        return self._proba(self.transform(cols, n))


class _BinaryLogistic:
    """``LogisticRegression.predict_proba`` of a binary model on a dense float64 matrix: the
    same three operations (``Z @ coef_.T + intercept_``, ``expit``, stack ``[1-p, p]``)
    without sklearn's per-call input validation (~0.2 ms a call)."""

    def __init__(self, estimator: Any, width: int):
        from scipy.special import expit
        from sklearn.linear_model import LogisticRegression

        coef = getattr(estimator, "coef_", None)
        if type(estimator) is not LogisticRegression or len(estimator.classes_) != 2 \
                or not isinstance(coef, np.ndarray) or coef.shape != (1, width) \
                or coef.dtype != np.float64:
            raise NotCompilable("not a dense binary LogisticRegression")
        self.coef_t = coef.T
        self.intercept = np.asarray(estimator.intercept_)
        self.expit = expit

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        prob = (Z @ self.coef_t + self.intercept).reshape(-1)
        prob = self.expit(prob, out=prob)
        return np.stack([1 - prob, prob], axis=1)


def _typed(col: Column, value: Any) -> Any:
    """A category string (or example value) as a value of the column's signature type."""
    if value is None:
        return None
    try:
        if col.kind == "long":
            return int(value)
        if col.kind == "double":
            return float(value)
        if col.kind == "boolean":
            return {"True": True, "False": False}.get(str(value), bool(value))
    except (TypeError, ValueError):
        return None
    return str(value)


def probe_rows(columns: list[Column], scorer: CompiledScorer, example: pd.DataFrame | None
               ) -> dict[str, list[Any]]:
    """Rows that exercise the compiled path: the input example, then the first example row
    with every known category, an unseen category and a missing value put in each
    categorical column in turn, and missing/blank/extreme values in each numeric one."""
    base: dict[str, list[Any]] = {}
    if example is not None and len(example):
        for col in columns:
            values = [None if (isinstance(v, float) and math.isnan(v)) else _typed(col, v)
                      for v in example[col.name].tolist()] if col.name in example else []
            base[col.name] = values
    if not base or any(len(v) == 0 for v in base.values()):
        first = {c.name: None for c in columns}
        for part_cols, maps, _ in scorer.onehot_parts:
            for col, mapping in zip(part_cols, maps, strict=True):
                first[col.name] = _typed(col, next(iter(mapping), None))
        for part_cols, _, _ in scorer.numeric_parts:
            for col in part_cols:
                first[col.name] = "1" if col.kind == "string" else _typed(col, 1)
        base = {name: [value] for name, value in first.items()}
    rows = {name: list(values) for name, values in base.items()}

    def add(name: str, value: Any) -> None:
        for other in rows:
            rows[other].append(value if other == name else base[other][0])

    for part_cols, maps, ignore in scorer.onehot_parts:
        for col, mapping in zip(part_cols, maps, strict=True):
            unseen = ["__unseen__"] if ignore and col.kind == "string" else []
            for value in [*mapping, *unseen, None]:
                add(col.name, _typed(col, value) if value is not None else None)
    for part_cols, _, _ in scorer.numeric_parts:
        for col in part_cols:
            values = ["", " ", " 7.25 ", "1234.5", "-0", "0.000123", "-3e2",
                      "902.3209082836559", None] if col.kind == "string" else [None, 0, -1, 1e6]
            for value in values:
                add(col.name, _typed(col, value) if col.kind != "string" else value)
    return rows


def verify(compiled: CompiledScorer, reference: PipelineScorer, rows: dict[str, list[Any]]
           ) -> str | None:
    """None when the compiled scorer reproduces the pipeline exactly on ``rows``, else why."""
    n = len(next(iter(rows.values())))
    cols = {c.name: check_values(c, rows[c.name]) for c in compiled.columns}
    features = np.asarray(reference.model[:-1].transform(reference.frame(cols)), np.float64)
    mine = compiled.transform(cols, n)
    if features.shape != mine.shape or not np.array_equal(features, mine, equal_nan=True):
        diff = np.nanmax(np.abs(features - mine)) if features.shape == mine.shape else "shape"
        return f"compiled features differ from the pipeline's (max difference {diff})"
    expected = reference.predict_proba(cols, n)
    got = compiled.predict_proba(cols, n)
    if not np.array_equal(expected, got):
        return f"compiled probabilities differ (max {np.max(np.abs(expected - got))})"
    return None


# -- the loaded model -----------------------------------------------------------------
@dataclass
class ServedModel:
    """The model being served and what the registry says about it."""

    name: str
    version: str
    alias: str | None
    uri: str  # models:/name/version, what was loaded
    requested_uri: str
    run_id: str | None
    tags: dict[str, str]
    threshold: float
    columns: list[Column]
    scorer: Any  # CompiledScorer | PipelineScorer
    tracking_uri: str
    scorer_note: str = ""
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    id_column: str | None = None  # the schema's id column, recorded when it was logged

    @property
    def data_hash(self) -> str | None:
        return self.tags.get("mlfolio.data_hash")

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok", "model": self.name, "version": self.version, "alias": self.alias,
            "model_uri": self.uri, "requested_uri": self.requested_uri, "run_id": self.run_id,
            "data_hash": self.data_hash, "threshold": self.threshold,
            "run_dir": self.tags.get("mlfolio.run_dir"), "scorer": self.scorer.name,
            "scorer_note": self.scorer_note or None, "loaded_at": self.loaded_at,
            "columns": {c.name: c.kind for c in self.columns}, "id_column": self.id_column,
        }


_MODEL_URI_FORMS = ("models:/<name>@<alias>, models:/<name>/<version> or an MLflow model "
                    "directory")
# A model directory (SageMaker's /opt/ml/model) has no registry around it: the container's
# environment says what the registry would (the sagemaker target sets these).
MODEL_NAME_ENV = "MLFOLIO_MODEL_NAME"
MODEL_VERSION_ENV = "MLFOLIO_MODEL_VERSION"
THRESHOLD_ENV = "MLFOLIO_THRESHOLD"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` → (name, alias, None); ``models:/name/3`` → (name, None, "3").

    A model directory is not a registry URI: see :func:`model_directory`."""
    if not uri.startswith("models:/"):
        raise ServeError(f"--model {uri!r}: expected {_MODEL_URI_FORMS}")
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if name and alias and "/" not in alias:
            return name, alias, None
    else:
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return name, None, version
    raise ServeError(f"--model {uri!r}: expected {_MODEL_URI_FORMS}")


def model_directory(uri: str) -> Path | None:
    """The local MLflow model directory ``uri`` names (a path or a ``file://`` URI), None
    for a registry URI; a ServeError when the path is no model directory."""
    if uri.startswith("models:/"):
        return None
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    elif "://" in uri or uri.startswith(("models:", "runs:")):
        raise ServeError(f"--model {uri!r}: expected {_MODEL_URI_FORMS}")
    else:
        path = Path(uri)
    if not path.is_dir():
        raise ServeError(f"--model {uri!r}: no such directory (expected {_MODEL_URI_FORMS})")
    if not (path / "MLmodel").is_file():
        raise ServeError(f"--model {uri!r}: not an MLflow model directory (no MLmodel file "
                         "in it)")
    return path.resolve()


@dataclass
class _DirectoryVersion:
    """What the registry would say about a model directory, from the environment."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


def _directory_version(path: Path, run_id: str | None) -> _DirectoryVersion:
    tags = {}
    threshold = os.environ.get(THRESHOLD_ENV)
    if threshold:
        tags["mlfolio.threshold"] = threshold  # checked like the registry's tag
    return _DirectoryVersion(os.environ.get(MODEL_NAME_ENV) or path.name,
                             os.environ.get(MODEL_VERSION_ENV) or "0", run_id, tags)


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the project's sqlite:///<project>/mlflow.db (as `run`)."""
    from mlfolio.config import project_dir

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir() / 'mlflow.db'}"


def load(model_uri: str, tracking_uri: str | None = None, scorer: str = "auto"
         ) -> ServedModel:
    """Resolve ``model_uri`` in the registry once, load that version, pick the scorer.

    ``model_uri`` may also be a model directory (:func:`model_directory`), loaded without a
    registry: name, version and threshold from $MLFOLIO_MODEL_NAME (else the folder's
    name), $MLFOLIO_MODEL_VERSION (else 0) and $MLFOLIO_THRESHOLD (else 0.5)."""
    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    if scorer not in ("auto", "pipeline"):
        raise ServeError(f"scorer {scorer!r}: expected 'auto' or 'pipeline'")
    tracking_uri = tracking_uri or default_tracking_uri()
    directory = model_directory(model_uri)
    if directory is not None:
        local = str(directory)
        meta = Model.load(local)
        mv: Any = _directory_version(directory, meta.run_id)
        name, alias, served_uri = mv.name, None, local
    else:
        name, alias, version = parse_model_uri(model_uri)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        try:
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
            download_uri = client.get_model_version_download_uri(name, mv.version)
            local = mlflow.artifacts.download_artifacts(artifact_uri=download_uri,
                                                        tracking_uri=tracking_uri)
        except MlflowException as exc:
            raise ServeError(f"{model_uri} in {tracking_uri}: {exc.message}") from exc
        meta = Model.load(local)
        served_uri = f"models:/{name}/{mv.version}"
    if "sklearn" not in meta.flavors:
        raise ServeError(f"{model_uri}: not a scikit-learn model (flavors "
                         f"{sorted(meta.flavors)})")
    pipeline = mlflow.sklearn.load_model(local)
    if not hasattr(pipeline, "predict_proba"):
        raise ServeError(f"{model_uri}: the model has no predict_proba")
    classes = getattr(pipeline, "classes_", None)
    if classes is not None and len(classes) != 2:
        raise ServeError(f"{model_uri}: a binary classifier is expected, the model has "
                         f"classes {list(classes)}")
    coercer = _steps(pipeline)[0]
    columns = columns_from_signature(meta.signature, getattr(coercer, "numeric", None) or ())
    tags = dict(mv.tags or {})
    raw = tags.get("mlfolio.threshold")
    try:
        threshold = float(raw) if raw is not None else DEFAULT_THRESHOLD
    except ValueError:
        raise ServeError(f"{model_uri}: tag mlfolio.threshold={raw!r} is not a number") from None
    if not 0.0 <= threshold <= 1.0:
        raise ServeError(f"{model_uri}: tag mlfolio.threshold={raw!r} is outside [0, 1]")

    reference = PipelineScorer(pipeline, columns)
    chosen: Any = reference
    note = "requested with --scorer pipeline" if scorer == "pipeline" else ""
    if scorer == "auto":
        try:
            compiled = CompiledScorer(pipeline, columns)
            try:
                example = meta.load_input_example(local)
            except Exception as exc:  # an unreadable example only costs us probe rows
                log.info("no input example for %s: %s", model_uri, exc)
                example = None
            rows = probe_rows(columns, compiled,
                              example if isinstance(example, pd.DataFrame) else None)
            problem = verify(compiled, reference, rows)
        except NotCompilable as exc:
            problem = f"pipeline not compiled: {exc}"
        if problem is None:
            chosen = compiled
        else:
            note = problem
            log.warning("%s: scoring through the pipeline (%s)", model_uri, problem)
    return ServedModel(name=name, version=str(mv.version), alias=alias,
                       uri=served_uri, requested_uri=model_uri,
                       run_id=mv.run_id, tags=tags, threshold=threshold, columns=columns,
                       scorer=chosen, tracking_uri=tracking_uri, scorer_note=note,
                       id_column=model_id_column(meta))


# -- metrics --------------------------------------------------------------------------
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
SCORE_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 20)) + (1.0,)


class _ScoreHistogram:
    """A Prometheus histogram of prediction scores, updated a batch at a time with NumPy
    (prometheus_client's Histogram takes one observation per call)."""

    def __init__(self, name: str, doc: str, labels: dict[str, str], buckets: tuple[float, ...]):
        self.name, self.doc, self.labels = name, doc, labels
        self.edges = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self.total = 0.0
        self.lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        counts = np.bincount(np.searchsorted(self.edges, values, side="left"),
                             minlength=len(self.counts))
        with self.lock:
            self.counts += counts
            self.total += float(np.sum(values))

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        with self.lock:
            cumulative, total = np.cumsum(self.counts), self.total
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        buckets = [(floatToGoString(e), float(c)) for e, c in zip(self.edges, cumulative,
                                                                   strict=False)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family.add_metric(list(self.labels.values()), buckets, total)
        yield family


class ServerMetrics:
    """The server's Prometheus registry; every family carries model and version labels."""

    def __init__(self, model: ServedModel):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        base = ["model", "version"]
        self.base = (model.name, model.version)
        reg = self.registry
        self.requests = Counter("mlfolio_requests", "HTTP requests by route and status code",
                                [*base, "route", "status"], registry=reg)
        self.latency = Histogram("mlfolio_request_duration_seconds",
                                 "Time from request to response, by route", [*base, "route"],
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_rows = Histogram("mlfolio_batch_rows", "Rows per predict_proba call",
                                    base, buckets=ROW_BUCKETS, registry=reg
                                    ).labels(*self.base)
        self.batch_requests = Histogram("mlfolio_batch_requests",
                                        "Requests scored together in one predict_proba call",
                                        base, buckets=REQUEST_BUCKETS, registry=reg
                                        ).labels(*self.base)
        self.batch_seconds = Histogram("mlfolio_batch_duration_seconds",
                                       "Time of one predict_proba call", base,
                                       buckets=LATENCY_BUCKETS, registry=reg
                                       ).labels(*self.base)
        self.predictions = Counter("mlfolio_predictions", "Rows scored, by predicted label",
                                   [*base, "label"], registry=reg)
        self.scores = _ScoreHistogram("mlfolio_prediction_score",
                                      "Predicted probability of the positive class",
                                      dict(zip(base, self.base, strict=True)), SCORE_BUCKETS)
        reg.register(self.scores)
        info = Gauge("mlfolio_model_info", "The model being served (value 1)",
                     [*base, "alias", "run_id", "scorer"], registry=reg)
        info.labels(*self.base, model.alias or "", model.run_id or "", model.scorer.name).set(1)
        self.threshold = Gauge("mlfolio_model_threshold", "Label threshold of the model",
                               base, registry=reg)
        self.threshold.labels(*self.base).set(model.threshold)
        self.variant_rows = Counter("mlfolio_variant_rows",
                                    "Rows scored by each variant (shadow=1: scored alongside "
                                    "the champion, not answered)",
                                    [*base, "variant", "shadow"], registry=reg)
        self.shadow_failures = Counter("mlfolio_shadow_failures",
                                       "Shadow scorings that failed or were skipped (never "
                                       "seen by clients)", base, registry=reg
                                       ).labels(*self.base)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*self.base, route, str(status)),
                        self.latency.labels(*self.base, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, rows: int, requests: int, seconds: float, scores: np.ndarray,
              threshold: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)
        self.scores.observe_many(scores)
        positive = int(np.count_nonzero(scores >= threshold))
        if positive:
            self.predictions.labels(*self.base, "1").inc(positive)
        if rows - positive:
            self.predictions.labels(*self.base, "0").inc(rows - positive)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# -- micro-batching -------------------------------------------------------------------
@dataclass(eq=False)
class RowMeta:
    """Where a block's rows come from, for the prediction log: the request's id, the rows'
    positions in the request (None: 0..n-1) and the entity id (one for all rows, one per
    row, or None)."""

    request_id: str
    rows: np.ndarray | None = None
    entity: str | list[Any] | None = None


@dataclass(eq=False)
class _Job:
    block: Block
    future: asyncio.Future
    meta: RowMeta | None = None


class MicroBatcher:
    """Scores the requests that arrive while a batch is being scored as one next batch.

    Requests wait in a deque; a single task takes everything waiting (up to
    ``max_batch_rows`` rows) and hands it to the scoring thread: one ``predict_proba`` call,
    each caller's slice delivered back to the event loop in one callback. Batches grow with
    the load and shrink to one request when the server is idle, so nothing waits for a
    timer. A batch that raises is re-scored request by request, so one bad request fails
    alone. With a prediction log, the scoring thread hands each scored request to it (an
    O(1) enqueue; the log's own thread writes).
    """

    def __init__(self, model: ServedModel, metrics: ServerMetrics | None,
                 max_batch_rows: int = MAX_BATCH_ROWS, max_pending_rows: int | None = None,
                 *, variant: str = "champion", shadow: bool = False,
                 predlog: PredictionLog | None = None):
        self.model = model
        self.scorer = model.scorer
        self.metrics = metrics
        self.variant = variant
        self.shadow = shadow
        self.predlog = predlog
        self.primary = variant == "champion" and not shadow
        self._rows_counter = None if metrics is None else metrics.variant_rows.labels(
            model.name, model.version, variant, str(int(shadow)))
        self.max_batch_rows = max(1, max_batch_rows)
        self.max_pending_rows = max_pending_rows or 64 * self.max_batch_rows
        self._queue: deque[_Job] = deque()
        self._pending_rows = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._inbox: queue.SimpleQueue[tuple[list[_Job], asyncio.Future] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._thread = threading.Thread(target=self._worker, name="mlfolio-score", daemon=True)
        self._thread.start()
        self._task = self._loop.create_task(self._run(), name="mlfolio-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(RequestError("the server is shutting down", 503))
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    async def score(self, block: Block, meta: RowMeta | None = None) -> np.ndarray:
        """Class probabilities of ``block``'s rows, shape (n, 2)."""
        return await self.submit(block, meta)

    def submit(self, block: Block, meta: RowMeta | None = None) -> asyncio.Future:
        """Queue ``block``; the future gets its probabilities. Call on the event loop."""
        if self._task is None or self._wakeup is None:
            raise RequestError("the server is not ready", 503)
        if self._pending_rows + block.n > self.max_pending_rows and self._pending_rows:
            raise RequestError(f"the server is overloaded ({self._pending_rows} rows waiting)"
                               "; retry later", 503)
        future = self._loop.create_future()
        self._queue.append(_Job(block, future, meta))
        self._pending_rows += block.n
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            jobs = [self._queue.popleft()]
            rows = jobs[0].block.n
            while self._queue and rows + self._queue[0].block.n <= self.max_batch_rows:
                job = self._queue.popleft()
                jobs.append(job)
                rows += job.block.n
            self._pending_rows -= rows
            jobs = [job for job in jobs if not job.future.done()]  # callers gone away
            if jobs:
                done = self._loop.create_future()
                self._inbox.put((jobs, done))
                await done  # while the thread scores, new requests queue up

    def _worker(self) -> None:
        """The scoring thread: batches in, results handed to the loop in one callback."""
        assert self._loop is not None
        while (item := self._inbox.get()) is not None:
            jobs, done = item
            try:
                results = self._score_jobs(jobs)
            except Exception as exc:  # _score_jobs catches; this is a last resort
                log.exception("batch scoring failed")
                results = [exc] * len(jobs)
            try:
                self._loop.call_soon_threadsafe(_deliver, jobs, results, done)
            except RuntimeError:  # the loop closed while we scored
                return

    def _score_jobs(self, jobs: list[_Job]) -> list[np.ndarray | BaseException]:
        """Runs on the worker thread: one predict_proba for all jobs, sliced back."""
        started = time.perf_counter()
        if len(jobs) == 1:
            cols, n = jobs[0].block.columns, jobs[0].block.n
        else:
            n = sum(job.block.n for job in jobs)
            cols = {c.name: list(itertools.chain.from_iterable(
                job.block.columns[c.name] for job in jobs)) for c in self.model.columns}
        try:
            proba = self.scorer.predict_proba(cols, n)
        except Exception as exc:
            if len(jobs) > 1:
                return [self._score_jobs([job])[0] for job in jobs]
            return [_scoring_error(exc)]
        if self.metrics is not None:
            if self.primary:
                self.metrics.batch(n, len(jobs), time.perf_counter() - started, proba[:, 1],
                                   self.model.threshold)
            self._rows_counter.inc(n)
        out: list[np.ndarray | BaseException] = []
        start = 0
        for job in jobs:
            out.append(proba[start:start + job.block.n])
            start += job.block.n
        if self.predlog is not None:
            self._log_batch(jobs, cols, proba, out)
        return out

    def _log_batch(self, jobs: list[_Job], cols: dict[str, list[Any]], proba: np.ndarray,
                   out: list[np.ndarray | BaseException]) -> None:
        """Hand the whole scored batch to the prediction log as one append (the columns
        are already concatenated): per-request work stays off the log's path."""
        if len(jobs) == 1 or any(job.meta is None for job in jobs):
            self._log(jobs, out)
            return
        request_ids: list[str] = []
        rows: list[int] = []
        entities: list[Any] = []
        for job in jobs:
            meta, n = job.meta, job.block.n
            assert meta is not None
            request_ids += [meta.request_id] * n
            rows += range(n) if meta.rows is None else meta.rows.tolist()
            entities += (meta.entity if isinstance(meta.entity, list)
                         else [meta.entity] * n)
        model = self.model
        self.predlog.append(cols, proba[:, 1], request_id=request_ids, rows=rows,
                            entity_id=entities, model_name=model.name,
                            model_version=model.version, variant=self.variant,
                            threshold=model.threshold, shadow=self.shadow, ts=time.time())

    def _log(self, jobs: list[_Job], results: list[np.ndarray | BaseException]) -> None:
        """Hand each scored request to the prediction log: one enqueue per request."""
        model, log_ = self.model, self.predlog
        assert log_ is not None
        ts = time.time()
        for job, proba in zip(jobs, results, strict=True):
            meta = job.meta
            if meta is None or isinstance(proba, BaseException):
                continue
            log_.append(job.block.columns, proba[:, 1], request_id=meta.request_id,
                        rows=meta.rows, entity_id=meta.entity, model_name=model.name,
                        model_version=model.version, variant=self.variant,
                        threshold=model.threshold, shadow=self.shadow, ts=ts)


def _deliver(jobs: list[_Job], results: list[np.ndarray | BaseException],
             done: asyncio.Future) -> None:
    """On the event loop: each caller gets its slice (or its error), then the next batch."""
    for job, result in zip(jobs, results, strict=True):
        if job.future.done():
            continue
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
    if not done.done():
        done.set_result(None)


def _scoring_error(exc: Exception) -> BaseException:
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ValueError | TypeError):
        return RequestError(f"the model could not score these rows: {exc}")
    log.error("predict_proba failed", exc_info=exc)
    return RequestError(f"predict_proba failed: {type(exc).__name__}: {exc}", 500)


# -- A/B routing, shadow scoring, request ids -----------------------------------------
MAX_ID_LENGTH = 128


def route_share(salt: str, key: str) -> float:
    """A stable number in [0, 1) for ``key``: the first 8 bytes of BLAKE2b(salt:key).

    A row goes to the challenger when this is below the challenger's weight, so an entity
    keeps its variant across requests, batch sizes and server restarts (same salt)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def routing_mode(challenger: str | None, challenger_weight: float | None, shadow: bool
                 ) -> str | None:
    """``"ab"``, ``"shadow"`` or None (one model); a ServeError names the offending flag."""
    if challenger is None:
        if challenger_weight is not None:
            raise ServeError("--challenger-weight needs --challenger URI")
        if shadow:
            raise ServeError("--shadow needs --challenger URI")
        return None
    if challenger_weight is not None and shadow:
        raise ServeError("--challenger-weight and --shadow exclude each other: A/B routing "
                         "or shadow scoring, not both")
    if shadow:
        return "shadow"
    if challenger_weight is None:
        raise ServeError("--challenger needs --challenger-weight W (0 < W < 1, A/B routing) "
                         "or --shadow (scored and logged, not answered)")
    if not 0.0 < challenger_weight < 1.0 or math.isnan(challenger_weight):
        raise ServeError(f"--challenger-weight {challenger_weight:g}: expected a share "
                         "strictly between 0 and 1")
    return "ab"


def _id_header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None and (not 0 < len(value) <= MAX_ID_LENGTH or not value.isprintable()):
        raise RequestError(f"{name} header: expected 1 to {MAX_ID_LENGTH} printable "
                           f"characters, got {len(value)}")
    return value


def _request_id(request: Request) -> str:
    """The client's X-Request-ID, else a new one; kept for the error handler's header."""
    request_id = _id_header(request, "X-Request-ID") or uuid.uuid4().hex
    request.state.request_id = request_id
    return request_id


@dataclass(eq=False)
class _Part:
    batcher: MicroBatcher
    block: Block
    meta: RowMeta | None
    index: np.ndarray | None = None  # the part's rows in the request; None: all of them


@dataclass(eq=False)
class _Plan:
    n: int
    parts: list[_Part]
    mask: np.ndarray | None = None  # A/B: True where the row goes to the challenger


@dataclass(eq=False)
class _Scored:
    proba: np.ndarray
    labels: np.ndarray
    threshold: float
    variants: list[str] | None  # per row, in A/B mode
    variant: str  # champion, challenger or mixed
    model: ServedModel  # of the answer (the champion's when mixed)


class Router:
    """Sends each request's rows to the champion, the challenger or both.

    A/B: a row goes to the challenger when ``route_share(salt, key) < weight``; the key is
    the row's entity id (``--entity-column``), else the request's X-Entity-ID header, else
    its request id (not sticky). A request split between variants is scored as two blocks
    at once and put back in row order. Shadow: the champion answers; the challenger scores
    the same rows in the background, logged with shadow=1, its failures only counted.
    """

    def __init__(self, champion: MicroBatcher, challenger: MicroBatcher | None,
                 mode: str | None, weight: float | None, salt: str,
                 entity_column: str | None, logging_on: bool, metrics: ServerMetrics):
        self.champion, self.challenger = champion, challenger
        self.mode, self.weight, self.salt = mode, weight, salt
        self.entity_column = entity_column
        self.logging_on = logging_on
        self.metrics = metrics
        self._shadow_warned = 0.0

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode or "single", "weight": self.weight,
                "salt": self.salt if self.mode == "ab" else None,
                "entity_column": self.entity_column}

    def prepare(self, block: Block, request_id: str, header_entity: str | None) -> _Plan:
        """Take the entity ids out of the rows and decide where each row goes. Pure CPU,
        run off the event loop with the parsing for big bodies."""
        entity = None
        if self.entity_column is not None:
            entity = block.columns.pop(self.entity_column, None)
        meta = None
        if self.logging_on:
            meta = RowMeta(request_id, None, entity if entity is not None else header_entity)
        if self.mode != "ab":
            return _Plan(block.n, [_Part(self.champion, block, meta)])
        assert self.challenger is not None and self.weight is not None
        fallback = header_entity or request_id
        if entity is None:
            to_challenger = route_share(self.salt, fallback) < self.weight
            return _Plan(block.n, [_Part(self.challenger if to_challenger else self.champion,
                                         block, meta)])
        salt, weight = self.salt, self.weight
        mask = np.fromiter((route_share(salt, fallback if v is None else str(v)) < weight
                            for v in entity), dtype=bool, count=block.n)
        if mask.all() or not mask.any():
            return _Plan(block.n, [_Part(self.challenger if mask[0] else self.champion,
                                         block, meta)], mask)
        parts = []
        for flag, batcher in ((False, self.champion), (True, self.challenger)):
            index = np.flatnonzero(mask == flag)
            rows = index.tolist()
            cols = {name: [values[i] for i in rows] for name, values in block.columns.items()}
            sub_meta = None if meta is None else RowMeta(request_id, index,
                                                         [entity[i] for i in rows])
            parts.append(_Part(batcher, Block(len(rows), cols), sub_meta, index))
        return _Plan(block.n, parts, mask)

    async def score(self, plan: _Plan) -> _Scored:
        ab = self.mode == "ab"
        if len(plan.parts) == 1:
            part = plan.parts[0]
            future = part.batcher.submit(part.block, part.meta)
            if self.mode == "shadow":
                self._shadow(part.block, part.meta)
            proba = await future
            model = part.batcher.model
            labels = (proba[:, 1] >= model.threshold).astype(int)
            variant = part.batcher.variant
            return _Scored(proba, labels, model.threshold, [variant] * plan.n if ab else None,
                           variant, model)
        futures: list[asyncio.Future] = []
        try:
            for part in plan.parts:
                futures.append(part.batcher.submit(part.block, part.meta))
        except RequestError:
            for future in futures:
                future.cancel()
            raise
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        proba = np.empty((plan.n, 2), dtype=np.float64)
        labels = np.empty(plan.n, dtype=int)
        for part, result in zip(plan.parts, results, strict=True):
            proba[part.index] = result
            labels[part.index] = result[:, 1] >= part.batcher.model.threshold
        assert plan.mask is not None
        variants = np.where(plan.mask, "challenger", "champion").tolist()
        return _Scored(proba, labels, self.champion.model.threshold, variants, "mixed",
                       self.champion.model)

    def _shadow(self, block: Block, meta: RowMeta | None) -> None:
        """Score on the challenger without waiting: nothing here reaches the response."""
        assert self.challenger is not None
        try:
            future = self.challenger.submit(block, meta)
        except RequestError as exc:  # challenger overloaded: skip it, never the request
            self._shadow_failed(exc)
            return
        future.add_done_callback(self._shadow_done)

    def _shadow_done(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._shadow_failed(future.exception())

    def _shadow_failed(self, exc: BaseException | None) -> None:
        self.metrics.shadow_failures.inc()
        now = time.monotonic()
        if now - self._shadow_warned > 60:  # at most a line a minute under a failure storm
            self._shadow_warned = now
            log.warning("shadow scoring on the challenger failed: %s", exc)


class _PredlogCollector:
    """Prometheus counters read from the prediction log's own counts at scrape time."""

    def __init__(self, predlog: PredictionLog, labels: dict[str, str]):
        self.predlog, self.labels = predlog, labels

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.predlog.stats()
        names, values = list(self.labels), list(self.labels.values())
        for key, doc in (("rows_written", "Rows committed to the prediction log"),
                         ("rows_dropped", "Rows the prediction log dropped (queue full or "
                                          "write error)")):
            family = CounterMetricFamily(f"mlfolio_prediction_log_{key}", doc, labels=names)
            family.add_metric(values, stats[key])
            yield family
        queued = GaugeMetricFamily("mlfolio_prediction_log_rows_queued",
                                   "Rows waiting to be written to the prediction log",
                                   labels=names)
        queued.add_metric(values, stats["rows_queued"])
        yield queued


class _DriftCollector:
    """The latest monitor verdict (``drift.json`` next to the prediction log) as gauges,
    via :func:`mlfolio.monitor.drift_gauge_families`; re-read only when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._families: list[Any] = []
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def _once(self, what: str, level: int, message: str, *args: Any) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.log(level, message, *args)

    def collect(self) -> Iterable[Any]:
        with self._lock:
            try:
                st = self.path.stat()
            except OSError:
                self._key, self._families = None, []
                self._once("missing", logging.INFO, "no %s yet: no drift gauges on /metrics",
                           self.path)
                return []
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key != self._key:
                self._key = key
                try:
                    from mlfolio.monitor import drift_gauge_families

                    doc = json.loads(self.path.read_text())
                    if not isinstance(doc, dict):
                        raise ValueError("not a JSON object")
                    self._families = list(drift_gauge_families(doc))
                except (OSError, ValueError, TypeError, KeyError, AttributeError,
                        ImportError) as exc:
                    self._families = []
                    self._once(f"bad {key}", logging.WARNING, "%s unreadable, no drift gauges: "
                               "%s", self.path, exc)
            return list(self._families)


# -- the app --------------------------------------------------------------------------
def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


@dataclass(eq=False)
class _Admission:
    """Bytes of request bodies in flight: announced or received, until the answer is sent."""

    limit: int
    inflight: int = 0


@dataclass(eq=False)
class _Ticket:
    """One request's share of the in-flight bytes (event loop only: no lock)."""

    admission: _Admission
    declared: bool  # a Content-Length was held up front
    held: int = 0

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes; False, holding nothing, when that passes the limit while
        other requests hold bytes (a request alone always gets in)."""
        adm = self.admission
        if adm.inflight > self.held and adm.inflight + n > adm.limit:
            return False
        adm.inflight += n
        self.held += n
        return True

    def release(self) -> None:
        self.admission.inflight -= self.held
        self.held = 0

    def refusal(self) -> str:
        return (f"{self.admission.inflight - self.held} bytes of request bodies are in flight "
                f"(limit {self.admission.limit}); retry later")


_RETRY_AFTER = [(b"retry-after", b"1")]


class _Gate:
    """Pure ASGI middleware: bearer token, body-size precheck and admission, per-route
    metrics, and a 500 instead of a dropped connection when a handler raises.

    Admission bounds memory: a body is refused (413) from its Content-Length when over
    ``max_body_bytes``, and (503, Retry-After) when it would bring the bodies in flight past
    ``max_inflight_bytes`` — both before any of it is read. A body without a length is
    counted as it arrives (:func:`_read_body`)."""

    def __init__(self, app: Any, *, route_of: Callable[[str], str], token: str | None,
                 max_body_bytes: int, metrics: ServerMetrics,
                 max_inflight_bytes: int = MAX_INFLIGHT_BYTES):
        self.app = app
        self.route_of = route_of
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.admission = _Admission(max_inflight_bytes)
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        route = self.route_of(path)
        status = 500
        response_started = False

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        ticket = None
        try:
            problem = self._refuse(scope, route)
            if problem is None:
                ticket = scope["mlfolio.ticket"]
                await self.app(scope, receive, send_and_record)
            else:
                code, message, headers = problem
                await _send(send_and_record, code, error_body(path, code, message), headers)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not response_started:
                await _send(send_and_record, 500, error_body(path, 500, "internal server "
                                                             "error; see the server log"))
        finally:
            if ticket is not None:
                ticket.release()
            self.metrics.request(route, status, time.perf_counter() - started)

    def _refuse(self, scope: dict[str, Any], route: str
                ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        if self.token is not None and route not in OPEN_ROUTES:
            given = _header(scope, b"authorization")
            if given is None:
                return 401, "missing Authorization header: send 'Authorization: Bearer " \
                            "<token>'", [(b"www-authenticate", b"Bearer")]
            # The scheme is case-insensitive (RFC 9110 11.1), the token is not.
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" \
                    or not hmac.compare_digest(credentials.lstrip(b" "), self.token):
                return 401, "invalid bearer token in the Authorization header", \
                    [(b"www-authenticate", b'Bearer error="invalid_token"')]
        length = _header(scope, b"content-length")
        size = 0
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, f"Content-Length {length.decode(errors='replace')!r} is not an " \
                            "integer", []
            if size > self.max_body_bytes:
                return 413, f"request body of {size} bytes exceeds the limit of " \
                            f"{self.max_body_bytes} bytes", []
        ticket = _Ticket(self.admission, declared=length is not None)
        if not ticket.take(size):
            return 503, ticket.refusal(), _RETRY_AFTER
        scope["mlfolio.ticket"] = ticket
        return None


async def _send(send: Any, status: int, body: bytes,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes even without a Content-Length (413), and
    a body without one that would pass the admission limit as it arrives (503)."""
    ticket: _Ticket | None = request.scope.get("mlfolio.ticket")
    counted = ticket is not None and not ticket.declared
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", 413)
        if counted and not ticket.take(len(chunk)):
            raise RequestError(ticket.refusal(), 503, headers={"retry-after": "1"})
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(body: bytes, parser: Callable[..., Any], *args: Any) -> Any:
    if len(body) > _PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parser, body, *args)
    return parser(body, *args)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc).encode(), status_code=status, media_type="application/json")


def _union_columns(model: ServedModel, challenger: ServedModel | None) -> list[Column]:
    """The columns a request must carry: the champion's, then any the challenger adds."""
    columns = list(model.columns)
    if challenger is None:
        return columns
    by_name = {c.name: c for c in columns}
    for col in challenger.columns:
        mine = by_name.get(col.name)
        if mine is None:
            columns.append(col)
        elif (mine.kind, mine.numeric_text) != (col.kind, col.numeric_text):
            raise ServeError(f"--challenger {challenger.requested_uri}: column {col.name!r} is "
                             f"{col.kind} there and {mine.kind} in the champion")
    return columns


def create_app(model: ServedModel, *, token: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, max_batch_rows: int = MAX_BATCH_ROWS,
               on_ready: Callable[[], None] | None = None,
               challenger: ServedModel | None = None, challenger_weight: float | None = None,
               shadow: bool = False, ab_salt: str | None = None,
               entity_column: str | None = None, prediction_log: str | Path | None = None,
               log_flush_seconds: float = 0.5, log_flush_rows: int = 1000,
               max_inflight_bytes: int = MAX_INFLIGHT_BYTES) -> FastAPI:
    """The FastAPI app serving ``model`` (see the module docstring for its routes).

    With ``challenger``: A/B routing (``challenger_weight``) or shadow scoring (``shadow``);
    ``prediction_log``: a folder for :class:`mlfolio.predlog.PredictionLog`;
    ``entity_column``: an input column holding entity ids, logged and used for routing, never
    scored; by default the id column of the schema the model was trained on.
    """
    mode = routing_mode(challenger.requested_uri if challenger else None, challenger_weight,
                        shadow)
    model_columns = _union_columns(model, challenger)
    if entity_column is None:
        entity_column = model.id_column or (challenger.id_column if challenger else None)
    if entity_column is not None and any(c.name == entity_column for c in model_columns):
        raise ServeError(f"--entity-column {entity_column!r} is an input of the model; the "
                         "entity column is taken out of the rows before scoring")
    columns = model_columns + ([Column(entity_column, "entity", optional=True)]
                               if entity_column else [])
    metrics = ServerMetrics(model)
    predlog = None
    if prediction_log is not None:
        predlog = PredictionLog(prediction_log, model_columns, flush_seconds=log_flush_seconds,
                                flush_rows=log_flush_rows)
        try:
            predlog.start()
        except (OSError, sqlite3.Error) as exc:
            raise ServeError(f"--prediction-log {prediction_log}: {exc}") from exc
        metrics.registry.register(_PredlogCollector(predlog, {"model": model.name,
                                                              "version": model.version}))
        metrics.registry.register(_DriftCollector(Path(prediction_log) / "drift.json"))
    batcher = MicroBatcher(model, metrics, max_batch_rows=max_batch_rows, predlog=predlog)
    batchers = [batcher]
    if challenger is not None:
        batchers.append(MicroBatcher(challenger, metrics, max_batch_rows=max_batch_rows,
                                     variant="challenger", shadow=mode == "shadow",
                                     predlog=predlog))
    router = Router(batcher, batchers[1] if challenger else None, mode, challenger_weight,
                    model.name if ab_salt is None else ab_salt, entity_column,
                    predlog is not None, metrics)
    variant_header = challenger is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        for b in batchers:
            await b.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            for b in batchers:
                await b.stop()
            if predlog is not None:  # after the batchers: what they scored is logged
                await asyncio.to_thread(predlog.close)

    app = FastAPI(title="mlfolio model server", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.model = model
    app.state.challenger = challenger
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.router = router
    app.state.predlog = predlog

    def id_headers(request: Request) -> dict[str, str] | None:
        request_id = getattr(request.state, "request_id", None)
        return None if request_id is None else {"x-request-id": request_id}

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        return Response(error_body(request.url.path, exc.status, str(exc)),
                        status_code=exc.status, media_type="application/json",
                        headers={**(id_headers(request) or {}), **exc.headers})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return Response(error_body(request.url.path, exc.status_code, message),
                        status_code=exc.status_code, media_type="application/json",
                        headers=getattr(exc, "headers", None))

    def check_model(name: str, version: str | None) -> None:
        if name != model.name:
            raise RequestError(f"unknown model {name!r}; this server serves {model.name!r}",
                               404)
        if version is not None and version != model.version:
            raise RequestError(f"model {name!r} version {version!r} is not loaded; this "
                               f"server serves version {model.version}", 404)

    def prepared(parser: Callable[..., Block], request_id: str, header_entity: str | None
                 ) -> Callable[..., _Plan]:
        def parse_and_route(body: bytes, *args: Any) -> _Plan:
            return router.prepare(parser(body, *args), request_id, header_entity)
        return parse_and_route

    def answer_headers(request_id: str, scored: _Scored) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if variant_header:
            headers["x-mlfolio-variant"] = scored.variant
        return headers

    # -- MLflow scoring protocol and SageMaker ---------------------------------------
    @app.get("/ping")
    async def ping() -> Response:
        return Response(b"\n", media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        doc = model.health()
        doc["variant"] = "champion"
        if challenger is not None:
            doc["challenger"] = {**challenger.health(), "variant": "challenger"}
        doc["routing"] = router.describe()
        if predlog is not None:
            doc["prediction_log"] = {"folder": str(predlog.folder), **predlog.stats()}
        return _json(doc)

    @app.get("/version")
    async def version() -> Response:
        import mlflow.version

        return Response(mlflow.version.VERSION, media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        request_id = _request_id(request)
        content_type = request.headers.get("content-type", "")
        mime, _, params = content_type.partition(";")
        mime = mime.strip().lower()
        charset = params.strip().lower().removeprefix("charset=").strip('"') or "utf-8"
        if mime not in ("application/json", "text/csv"):
            raise RequestError(f"Content-Type {content_type or '(none)'!r} is not supported: "
                               "send application/json or text/csv", 415)
        if params.strip() and (not params.strip().lower().startswith("charset=")
                               or charset not in ("utf-8", "utf8")):
            raise RequestError(f"Content-Type {content_type!r}: only charset=utf-8 is "
                               "supported", 415)
        body = await _read_body(request, max_body_bytes)
        parser = parse_csv if mime == "text/csv" else parse_mlflow_json
        plan = await _parse(body, prepared(parser, request_id, _id_header(request,
                                                                          "X-Entity-ID")),
                            columns)
        scored = await router.score(plan)
        proba, labels = scored.proba, scored.labels
        headers = answer_headers(request_id, scored)
        if "text/csv" in request.headers.get("accept", ""):
            lines = [f"{p!r},{k}" for p, k in zip(proba[:, 1].tolist(), labels.tolist(),
                                                    strict=True)]
            return Response(("\n".join(lines) + "\n").encode(), media_type="text/csv",
                            headers=headers)
        doc: dict[str, Any] = {"predictions": proba.tolist(), "labels": labels.tolist(),
                               "threshold": scored.threshold, "request_id": request_id}
        if scored.variants is not None:
            doc["variants"] = scored.variants
        return Response(json.dumps(doc).encode(), media_type="application/json",
                        headers=headers)

    # -- Open Inference Protocol -----------------------------------------------------
    @app.get("/v2")
    async def v2_server() -> Response:
        return _json({"name": "mlfolio", "version": _package_version(), "extensions": []})

    @app.get("/v2/health/live")
    async def v2_live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def v2_ready() -> Response:
        return _json({"ready": True})

    def metadata() -> dict[str, Any]:
        datatypes = {"long": "INT64", "double": "FP64", "string": "BYTES", "boolean": "BOOL"}
        return {
            "name": model.name, "versions": [model.version], "platform": "mlflow_sklearn",
            "inputs": [{"name": c.name, "datatype": datatypes[c.kind], "shape": [-1]}
                       for c in model_columns],
            "outputs": [{"name": "probability", "datatype": "FP64", "shape": [-1]},
                        {"name": "label", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"threshold": model.threshold, "alias": model.alias},
        }

    @app.get("/v2/models/{name}")
    async def v2_metadata(name: str) -> Response:
        check_model(name, None)
        return _json(metadata())

    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_metadata_version(name: str, version: str) -> Response:
        check_model(name, version)
        return _json(metadata())

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> Response:
        check_model(name, None)
        return _json({"name": model.name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_model_version_ready(name: str, version: str) -> Response:
        check_model(name, version)
        return _json({"name": model.name, "ready": True})

    async def infer(request: Request) -> Response:
        request_id = _request_id(request)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise RequestError(f"Content-Encoding {encoding!r} is not supported; send the "
                               "request uncompressed", 415)
        body = await _read_body(request, max_body_bytes)
        header_entity = _id_header(request, "X-Entity-ID")

        def parse_and_route(raw: bytes, length: str | None) -> tuple[V2Request, _Plan]:
            parsed = parse_v2(raw, length, columns)
            return parsed, router.prepare(parsed.block, request_id, header_entity)

        parsed, plan = await _parse(body, parse_and_route,
                                    request.headers.get("inference-header-content-length"))
        scored = await router.score(plan)
        parameters = None
        if scored.variants is not None:
            parameters = {"variant": scored.variant, "variants": scored.variants}
        content, headers = v2_response(scored.model, parsed, scored.proba,
                                       labels=scored.labels, parameters=parameters)
        headers.update(answer_headers(request_id, scored))
        return Response(content, headers=headers)

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        check_model(name, None)
        return await infer(request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer_version(name: str, version: str, request: Request) -> Response:
        check_model(name, version)
        return await infer(request)

    # -- Prometheus ------------------------------------------------------------------
    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    routes = [(r.path_regex, r.path) for r in app.router.routes if hasattr(r, "path_regex")]
    cache: dict[str, str] = {}

    def route_of(path: str) -> str:
        route = cache.get(path)
        if route is None:
            route = next((template for regex, template in routes if regex.match(path)),
                         "unmatched")
            if route != "unmatched" and len(cache) < 10_000:
                cache[path] = route
        return route

    app.add_middleware(_Gate, route_of=route_of, token=token, max_body_bytes=max_body_bytes,
                       metrics=metrics, max_inflight_bytes=max_inflight_bytes)
    return app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlfolio")
    except PackageNotFoundError:
        return "0"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets
    # whose proto says TCP. Without it every keep-alive response stalls ~40 ms (Nagle's
    # algorithm waiting for the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    # Listening before uvicorn starts serving: connections made once the "listening on"
    # line is printed wait in the backlog instead of being refused.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(model_uri: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, tracking_uri: str | None = None,
          max_body_bytes: int = MAX_BODY_BYTES, max_batch_rows: int = MAX_BATCH_ROWS,
          scorer: str = "auto", access_log: bool = False,
          echo: Callable[[str], None] | None = None, challenger: str | None = None,
          challenger_weight: float | None = None, shadow: bool = False,
          ab_salt: str | None = None, entity_column: str | None = None,
          prediction_log: str | Path | None = None,
          max_inflight_bytes: int = MAX_INFLIGHT_BYTES) -> None:
    """Load the model (and the challenger), then serve with uvicorn until SIGINT/SIGTERM.

    ``port=0`` picks a free port; the ``listening on`` line (through ``echo``) names it.
    The prediction log is flushed and closed on shutdown (SIGTERM included).
    """
    import uvicorn

    started = time.perf_counter()
    mode = routing_mode(challenger, challenger_weight, shadow)  # bad flags fail before loading
    model = load(model_uri, tracking_uri, scorer)
    second = load(challenger, tracking_uri, scorer) if challenger else None
    app = create_app(model, token=token, max_body_bytes=max_body_bytes,
                     max_batch_rows=max_batch_rows, on_ready=lambda: ready(),
                     challenger=second, challenger_weight=challenger_weight, shadow=shadow,
                     ab_salt=ab_salt, entity_column=entity_column,
                     prediction_log=prediction_log, max_inflight_bytes=max_inflight_bytes)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    where = f"[{bound_host}]" if ":" in bound_host else bound_host

    def ready() -> None:
        if echo is None:
            return
        if second is not None:
            how = (f"weight {challenger_weight:g}, salt {app.state.router.salt!r}"
                   if mode == "ab" else "shadow")
            echo(f"challenger {second.uri} ({challenger}, scorer {second.scorer.name}, "
                 f"threshold {second.threshold:g}): {how}")
        if prediction_log is not None:
            echo(f"prediction log: {Path(prediction_log) / 'predictions.sqlite'}")
        echo(f"serving {model.uri} ({model_uri}, scorer {model.scorer.name}, threshold "
             f"{model.threshold:g}) — listening on http://{where}:{bound_port} "
             f"(loaded in {time.perf_counter() - started:.1f}s)")

    # mlflow, pandas and sklearn leave ~330k objects behind; a full garbage collection walks
    # them all (~0.2 s here), stalling every request in flight. Freeze what exists now so the
    # collector only looks at objects made while serving.
    gc.collect()
    gc.freeze()
    # The scoring thread holds the GIL through NumPy/sklearn bookkeeping; a shorter switch
    # interval than the default 5 ms lets the event loop answer in between.
    sys.setswitchinterval(0.001)
    config = uvicorn.Config(app, log_level="info" if access_log else "warning",
                            access_log=access_log, lifespan="on", timeout_graceful_shutdown=10)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if app.state.predlog is not None:  # idempotent; covers a lifespan that never ended
            app.state.predlog.close()
