"""AWS Lambda entry point: the model bundled with the function, behind API Gateway.

``handler(event, context)`` answers API Gateway proxy events of both payload versions:

- REST API (payload 1.0): ``httpMethod``, ``path``, ``headers``, ``body``, ``isBase64Encoded``;
- HTTP API (payload 2.0): ``requestContext.http.method``, ``rawPath``, ``headers``, ``body``,
  ``isBase64Encoded`` (a ``/<stage>`` prefix of a named stage is stripped).

Routes:

- ``GET /ping`` — health: ``{"status": "ok", "model_version": ..., "threshold": ...}``; it
  loads the model, so a 200 means the function can score.
- ``POST /invocations`` — the MLflow scoring JSON formats (``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``) or ``text/csv`` (with or without a header
  row). The answer is ``{"predictions": [{"probability": p, "label": 0|1}, ...]}``, where
  ``probability`` is the positive-class probability and ``label`` is 1 when it reaches the
  threshold. Bad input is refused with a 400 ``{"error_code": "BAD_REQUEST", "message":
  ..., "field": ...}`` naming the field: a missing or unknown column, malformed JSON, a value
  of the wrong type (checked against the model signature before the model sees it; a
  string column the pipeline reads as a number, such as ``totalcharges``, takes numbers or
  numeric text). ``null`` (an empty CSV field) is a missing value.

Every answer is ``{"statusCode", "headers", "body", "isBase64Encoded": false}``, the shape
both payload versions accept. Invoked directly (``aws lambda invoke``) with a scoring JSON
document as the event, the handler returns the predictions document itself.

The model: a local MLflow model directory, ``$MODEL_DIR`` or ``model/`` next to this module
(where :func:`mlfolio.deploy.aws_lambda.build_package` puts it), loaded with
``mlflow.sklearn.load_model`` on the first request and kept for the life of the container.
The threshold is ``$MODEL_THRESHOLD``, else ``threshold`` in ``model.json`` next to the model
directory (written by ``build_package`` from the version's ``mlfolio.threshold`` tag), else
0.5. Nothing happens on import.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfolio.errors import MlfolioError

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "MODEL_DIR"
THRESHOLD_ENV = "MODEL_THRESHOLD"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"
META_FILE = "model.json"  # next to the model directory
DEFAULT_THRESHOLD = 0.5
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ROUTES = {"/ping": "GET", "/invocations": "POST"}
JSON_HEADERS = {"Content-Type": "application/json"}


class RequestError(MlfolioError):
    """A request the handler refuses: HTTP ``status`` and the request ``field`` at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.field = field
        self.status = status


class ModelLoadError(MlfolioError):
    """The bundled model could not be loaded (names the directory or variable)."""


# -- the model ------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # long, double, string, boolean, or "any" when the model has no signature
    numeric_text: bool = False  # a string column the model reads as a number


@dataclass(frozen=True)
class LoadedModel:
    pipeline: Any
    columns: tuple[Column, ...]
    threshold: float
    model_version: str | None
    model_dir: Path

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


_lock = threading.Lock()
_loaded: dict[tuple[str, str | None], LoadedModel] = {}

_KINDS = {"integer": "long", "long": "long", "float": "double", "double": "double",
          "string": "string", "boolean": "boolean"}


def _numeric_columns(pipeline: Any) -> set[str]:
    """Columns mlfolio's RawColumnCoercer reads as numbers (searched through the pipeline)."""
    found: set[str] = set()
    stack = [pipeline]
    while stack:
        step = stack.pop()
        if type(step).__name__ == "RawColumnCoercer":
            found.update(getattr(step, "numeric", None) or [])
        stack.extend(s for _, s in getattr(step, "steps", []) or [])
    return found


def _threshold(model_dir: Path, meta: dict[str, Any]) -> float:
    raw = os.environ.get(THRESHOLD_ENV)
    where = f"${THRESHOLD_ENV}"
    if raw is None:
        raw, where = meta.get("threshold"), f"{model_dir.parent / META_FILE}: threshold"
    if raw is None:
        return DEFAULT_THRESHOLD
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{where}: expected a number in (0, 1), got {raw!r}") from None
    if not 0 < value < 1:
        raise ModelLoadError(f"{where}: expected a number in (0, 1), got {value}")
    return value


def _load(model_dir: Path) -> LoadedModel:
    if not (model_dir / "MLmodel").is_file():
        raise ModelLoadError(f"no MLflow model at {model_dir} (set ${MODEL_DIR_ENV} to the "
                             "directory holding MLmodel)")
    meta_path = model_dir.parent / META_FILE
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise ModelLoadError(f"{meta_path}: not valid JSON: {exc}") from exc
    threshold = _threshold(model_dir, meta)

    import mlflow.sklearn
    from mlflow.models import Model

    pipeline = mlflow.sklearn.load_model(str(model_dir))
    signature = Model.load(str(model_dir / "MLmodel")).signature
    numeric = _numeric_columns(pipeline)
    if signature is not None and signature.inputs is not None and \
            signature.inputs.has_input_names():
        columns = []
        for spec in signature.inputs.inputs:
            type_name = getattr(spec.type, "name", str(spec.type))
            kind = _KINDS.get(type_name, "any")
            columns.append(Column(spec.name, kind, kind == "string" and spec.name in numeric))
    else:
        names = getattr(pipeline, "feature_names_in_", None)
        if names is None:
            raise ModelLoadError(f"{model_dir}: the model has no input signature and no "
                                 "feature_names_in_; cannot tell which columns it takes")
        columns = [Column(str(n), "any") for n in names]
    log.info("loaded model from %s (version %s, threshold %s)", model_dir,
             meta.get("model_version"), threshold)
    return LoadedModel(pipeline, tuple(columns), threshold, meta.get("model_version"),
                       model_dir)


def get_model() -> LoadedModel:
    """The bundled model, loaded once per container (again only if the settings change)."""
    model_dir = Path(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR).resolve()
    key = (str(model_dir), os.environ.get(THRESHOLD_ENV))
    with _lock:
        if key not in _loaded:
            loaded = _load(model_dir)
            _loaded.clear()
            _loaded[key] = loaded
        return _loaded[key]


# -- request rows ---------------------------------------------------------------------
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value if len(value) <= 40 else value[:37] + '...'!r}"
    return "an array" if isinstance(value, list) else "an object"


def _is_number_text(text: str) -> bool:
    stripped = text.strip()
    if not stripped:
        return True  # blank = missing
    try:
        return not math.isinf(float(stripped))
    except ValueError:
        return False


def _check(col: Column, value: Any, row: int) -> Any:
    """One value checked against its column's signature type (None = missing)."""
    if value is None or col.kind == "any":
        return value
    kind = col.kind
    ok = False
    if kind == "long":
        if type(value) is float and value.is_integer():
            value = int(value)
        ok = type(value) is int
    elif kind == "double":
        ok = type(value) in (int, float) and not (type(value) is float and math.isinf(value))
    elif kind == "boolean":
        ok = type(value) is bool
    elif kind == "string":
        if col.numeric_text:
            ok = (type(value) is str and _is_number_text(value)) or (
                type(value) in (int, float) and math.isfinite(value))
        else:
            ok = type(value) is str
    if not ok:
        expected = {"long": "an integer", "double": "a number", "boolean": "true or false",
                    "string": "a number or numeric text" if col.numeric_text else "a string"}
        raise RequestError(f"column {col.name!r}: expected {expected[kind]}, got "
                           f"{_describe(value)} in row {row}", field=col.name)
    return value


def _check_names(names: list[str], model: LoadedModel, where: str) -> None:
    expected = set(model.names)
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise RequestError(f"unknown column(s) {unknown} in {where}; the model takes "
                           f"{model.names}", field=unknown[0])
    present = set(names)
    missing = [n for n in model.names if n not in present]
    if missing:
        raise RequestError(f"missing column(s) {missing} in {where}", field=missing[0])


def _records(records: Any, model: LoadedModel, where: str) -> list[dict[str, Any]]:
    if not isinstance(records, list) or not records:
        raise RequestError(f"{where}: expected a non-empty array of objects, got "
                           f"{_describe(records)}", field=where)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RequestError(f"{where}[{i}]: expected an object naming the columns, got "
                               f"{_describe(rec)}", field=f"{where}[{i}]")
        _check_names(list(rec), model, f"{where}[{i}]")
    return records


def _columnar(columns: dict[str, Any], model: LoadedModel, where: str) -> list[dict[str, Any]]:
    _check_names(list(columns), model, where)
    lengths = {}
    for name, values in columns.items():
        if not isinstance(values, list):
            raise RequestError(f"{where}.{name}: expected an array of values, got "
                               f"{_describe(values)}", field=name)
        lengths[name] = len(values)
    if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
        raise RequestError(f"{where}: every column needs the same, non-zero number of "
                           f"values, got {lengths}", field=where)
    n = next(iter(lengths.values()))
    return [{name: columns[name][i] for name in columns} for i in range(n)]


def rows_from_json(doc: Any, model: LoadedModel) -> list[dict[str, Any]]:
    """The rows of an MLflow scoring JSON document, as one dict per row."""
    if not isinstance(doc, dict):
        raise RequestError(f"body: expected a JSON object with one of {list(FORMATS)}, got "
                           f"{_describe(doc)}", field="body")
    keys = [k for k in doc if k in FORMATS]
    others = [k for k in doc if k not in FORMATS]
    if others:
        raise RequestError(f"unknown field(s) {others}; expected exactly one of "
                           f"{list(FORMATS)}", field=others[0])
    if len(keys) != 1:
        raise RequestError(f"body: expected exactly one of {list(FORMATS)}, got "
                           f"{keys or 'none'}", field="body")
    key = keys[0]
    payload = doc[key]
    if key == "dataframe_split":
        if not isinstance(payload, dict):
            raise RequestError(f"dataframe_split: expected an object with 'columns' and "
                               f"'data', got {_describe(payload)}", field=key)
        extra = sorted(set(payload) - {"columns", "data", "index"})
        if extra:
            raise RequestError(f"dataframe_split: unknown field(s) {extra}; expected "
                               "'columns', 'data' and optionally 'index'",
                               field=f"dataframe_split.{extra[0]}")
        columns, data = payload.get("columns"), payload.get("data")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise RequestError("dataframe_split.columns: expected an array of column names",
                               field="dataframe_split.columns")
        if len(set(columns)) != len(columns):
            raise RequestError(f"dataframe_split.columns: duplicated names in {columns}",
                               field="dataframe_split.columns")
        _check_names(columns, model, "dataframe_split.columns")
        if not isinstance(data, list) or not data:
            raise RequestError("dataframe_split.data: expected a non-empty array of rows",
                               field="dataframe_split.data")
        rows = []
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != len(columns):
                raise RequestError(f"dataframe_split.data[{i}]: expected an array of "
                                   f"{len(columns)} values, got {_describe(row)}"
                                   + (f" of {len(row)}" if isinstance(row, list) else ""),
                                   field=f"dataframe_split.data[{i}]")
            rows.append(dict(zip(columns, row, strict=True)))
        return rows
    if key == "dataframe_records":
        return _records(payload, model, key)
    # instances / inputs (TF-serving style): records, or one array per column
    if isinstance(payload, dict):
        return _columnar(payload, model, key)
    return _records(payload, model, key)


def _from_text(col: Column, text: str, row: int) -> Any:
    if text == "":
        return None
    kind = col.kind
    try:
        if kind == "long":
            value = float(text) if any(c in text for c in ".eE") else int(text)
            return _check(col, value, row)
        if kind == "double":
            return float(text)
        if kind == "boolean":
            lowered = text.strip().lower()
            if lowered in ("true", "false", "1", "0"):
                return lowered in ("true", "1")
            raise ValueError(text)
    except ValueError:
        expected = {"long": "an integer", "double": "a number", "boolean": "true or false"}
        raise RequestError(f"column {col.name!r}: expected {expected[kind]}, got "
                           f"{text!r} in row {row}", field=col.name) from None
    return _check(col, text, row)


def rows_from_csv(text: str, model: LoadedModel) -> list[dict[str, Any]]:
    """CSV rows: a header naming the model's columns (any order), or none (signature order)."""
    lines = list(csv.reader(io.StringIO(text)))
    lines = [ln for ln in lines if ln]
    if not lines:
        raise RequestError("body: empty CSV", field="body")
    first = lines[0]
    names = model.names
    expected = set(names)
    if any(f in expected for f in first):  # a header row
        _check_names(first, model, "the CSV header")
        header, data = first, lines[1:]
    else:
        header, data = names, lines
    if not data:
        raise RequestError("body: the CSV has a header but no rows", field="body")
    by_name = {c.name: c for c in model.columns}
    rows = []
    for i, fields in enumerate(data):
        if len(fields) != len(header):
            raise RequestError(f"CSV row {i}: expected {len(header)} fields "
                               f"({', '.join(header)}), got {len(fields)}", field=f"row {i}")
        rows.append({name: _from_text(by_name[name], value, i)
                     for name, value in zip(header, fields, strict=True)})
    return rows


def predict(rows: list[dict[str, Any]], model: LoadedModel) -> list[dict[str, Any]]:
    """Check the rows against the signature, score them, apply the threshold."""
    import pandas as pd

    data: dict[str, Any] = {}
    for col in model.columns:
        values = [_check(col, row.get(col.name), i) for i, row in enumerate(rows)]
        if col.kind == "long" and any(v is None for v in values):
            # nullable integers: a missing value must not turn 0/1 flags into 0.0/1.0
            data[col.name] = pd.array(values, dtype="Int64")
        else:
            data[col.name] = values
    frame = pd.DataFrame(data, columns=model.names)
    proba = model.pipeline.predict_proba(frame)[:, 1]
    return [{"probability": float(p), "label": int(p >= model.threshold)} for p in proba]


# -- events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpRequest:
    version: str  # "1.0" (REST API) or "2.0" (HTTP API)
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def parse_event(event: dict[str, Any]) -> HttpRequest | None:
    """The HTTP request in an API Gateway proxy event (None if the event is not one)."""
    ctx = event.get("requestContext") or {}
    if isinstance(ctx.get("http"), dict):
        version, method = "2.0", ctx["http"].get("method", "")
        path = event.get("rawPath") or ctx["http"].get("path") or "/"
    elif "httpMethod" in event:
        version, method, path = "1.0", event["httpMethod"], event.get("path") or "/"
    else:
        return None
    stage = ctx.get("stage")
    if version == "2.0" and stage and stage != "$default" and path.startswith(f"/{stage}/"):
        path = path[len(stage) + 1:]
    path = path.rstrip("/") or "/"
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw = event.get("body")
    if raw is None:
        body = b""
    elif event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(f"body: isBase64Encoded is true but the body is not valid "
                               f"base64 ({exc})", field="body") from None
    else:
        body = raw.encode() if isinstance(raw, str) else bytes(raw)
    return HttpRequest(version, method.upper(), path, headers, body)


def _response(status: int, doc: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"statusCode": status, "headers": {**JSON_HEADERS, **(headers or {})},
            "body": json.dumps(doc), "isBase64Encoded": False}


_ERROR_CODES = {400: "BAD_REQUEST", 404: "RESOURCE_DOES_NOT_EXIST", 405: "METHOD_NOT_ALLOWED",
                415: "UNSUPPORTED_MEDIA_TYPE", 500: "INTERNAL_ERROR",
                503: "TEMPORARILY_UNAVAILABLE"}


def _error(status: int, message: str, field: str | None = None,
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"error_code": _ERROR_CODES.get(status, "BAD_REQUEST"),
                           "message": message}
    if field is not None:
        doc["field"] = field
    return _response(status, doc, headers)


def _version_header(model: LoadedModel) -> dict[str, str]:
    return {"X-Model-Version": model.model_version} if model.model_version else {}


def _invocations(req: HttpRequest, model: LoadedModel) -> dict[str, Any]:
    content_type = req.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    try:
        text = req.body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("body: not UTF-8 text", field="body") from None
    if media == "text/csv":
        rows = rows_from_csv(text, model)
    elif media in ("application/json", "") or media.endswith("+json"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RequestError(f"body: malformed JSON: {exc}", field="body") from None
        rows = rows_from_json(doc, model)
    else:
        raise RequestError(f"Content-Type {content_type!r} is not supported; send "
                           "application/json or text/csv", field="Content-Type", status=415)
    return _response(200, {"predictions": predict(rows, model)}, _version_header(model))


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (``mlfolio.lambda_handler.handler``)."""
    try:
        req = parse_event(event if isinstance(event, dict) else {})
    except RequestError as exc:
        return _error(exc.status, str(exc), exc.field)
    if req is None:
        return _direct(event)
    allowed = ROUTES.get(req.path)
    if allowed is None:
        return _error(404, f"no route {req.method} {req.path}; routes: GET /ping, "
                           "POST /invocations")
    if req.method != allowed:
        return _error(405, f"{req.method} {req.path} is not allowed; use {allowed}",
                      headers={"Allow": allowed})
    try:
        model = get_model()
    except ModelLoadError as exc:
        log.error("model not loaded: %s", exc)
        return _error(503, f"model not loaded: {exc}")
    if req.path == "/ping":
        return _response(200, {"status": "ok", "model_version": model.model_version,
                               "threshold": model.threshold}, _version_header(model))
    try:
        return _invocations(req, model)
    except RequestError as exc:
        return _error(exc.status, str(exc), exc.field)
    except Exception:  # one bad request must not look like a platform failure
        log.exception("scoring failed")
        return _error(500, "scoring failed; see the function's logs")


def _direct(event: Any) -> dict[str, Any]:
    """``aws lambda invoke`` with a scoring document as the payload."""
    try:
        model = get_model()
        return {"predictions": predict(rows_from_json(event, model), model)}
    except RequestError as exc:
        return {"error_code": "BAD_REQUEST", "message": str(exc), "field": exc.field}
    except ModelLoadError as exc:
        return {"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"model not loaded: {exc}"}
