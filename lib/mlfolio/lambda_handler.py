"""AWS Lambda entry point: the model bundled with the function, behind API Gateway.

``handler(event, context)`` answers API Gateway proxy events of both payload versions:

- REST API (payload 1.0): ``httpMethod``, ``path``, ``headers``, ``body``, ``isBase64Encoded``;
- HTTP API (payload 2.0): ``requestContext.http.method``, ``rawPath``, ``headers``, ``body``,
  ``isBase64Encoded`` (a ``/<stage>`` prefix of a named stage is stripped).

Routes:

- ``GET /ping`` — health: ``{"status": "ok", "model_version": ..., "threshold": ...}``; it
  loads the model, so a 200 means the function can score.
- ``POST /invocations`` — ``mlfolio serve``'s contract, parsed, checked and scored by the same
  code (:mod:`mlfolio.serve.contract`, ``columns``, ``protocols``, ``scorer``; not its app,
  so FastAPI is never imported): the MLflow scoring JSON formats (``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``) or ``text/csv`` (with or without a header
  row); the schema's id column (recorded with the model) is accepted and never scored. The
  answer is the server's: ``{"predictions": [[p_negative, p_positive], ...], "labels": [...],
  "threshold": t, "request_id": ...}`` (``Accept: text/csv``: one ``probability,label`` line
  per row). Bad input is refused with the server's 400 ``{"error_code": "BAD_REQUEST",
  "message": ...}``, the message naming the column, row or field.

Every answer is ``{"statusCode", "headers", "body", "isBase64Encoded": false}``, the shape
both payload versions accept, with ``X-Request-ID`` (the client's, else API Gateway's request
id). Invoked directly (``aws lambda invoke``) with a scoring JSON document as the event, the
handler returns the predictions document itself.

The model: a local MLflow model directory, ``$MODEL_DIR`` or ``model/`` next to this module
(where :func:`mlfolio.deploy.aws_lambda.build_package` puts it), loaded with
``mlflow.sklearn.load_model`` on the first request and kept for the life of the container;
mlfolio's pipelines are compiled to NumPy operations as in the server, after the same check
against the pipeline. The threshold is ``$MODEL_THRESHOLD``, else ``threshold`` in
``model.json`` next to the model directory (written by ``build_package`` from the version's
``mlfolio.threshold`` tag), else 0.5. Nothing happens on import.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfolio.errors import ModelLoadError, RequestError
from mlfolio.serve.contract import (
    DEFAULT_THRESHOLD,
    INVOCATIONS_PATH,
    LIVENESS_PATH,
    check_id,
    error_body,
    scoring_error,
)

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "MODEL_DIR"
THRESHOLD_ENV = "MODEL_THRESHOLD"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"
META_FILE = "model.json"  # next to the model directory
ROUTES = {LIVENESS_PATH: "GET", INVOCATIONS_PATH: "POST"}
JSON_HEADERS = {"Content-Type": "application/json"}


# -- the model ------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    pipeline: Any
    columns: tuple[Any, ...]  # mlfolio.serve.columns.Column: the model's inputs
    threshold: float
    model_version: str | None
    model_dir: Path
    scorer: Any = None  # mlfolio.serve.scorer.CompiledScorer or PipelineScorer
    id_column: str | None = None  # accepted in requests, taken out before scoring

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def request_columns(self) -> list[Any]:
        """What a request may carry: the model's columns, then the optional id column."""
        from mlfolio.serve.columns import Column, ColumnKind

        extra = (
            [Column(self.id_column, ColumnKind.ENTITY, optional=True)]
            if self.id_column and self.id_column not in self.names
            else []
        )
        return [*self.columns, *extra]


_lock = threading.Lock()
_loaded: dict[tuple[str, str | None], LoadedModel] = {}


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


def _scorer(pipeline: Any, columns: list[Any], mlmodel: Any, model_dir: Path) -> Any:
    """The server's choice: the compiled pipeline when it reproduces the pipeline exactly."""
    import pandas as pd

    from mlfolio.errors import NotCompilable
    from mlfolio.serve.scorer import CompiledScorer, PipelineScorer, probe_rows, verify

    reference = PipelineScorer(pipeline, columns)
    try:
        compiled = CompiledScorer(pipeline, columns)
    except NotCompilable as exc:
        log.info("%s: scoring through the pipeline (%s)", model_dir, exc)
        return reference
    try:
        example = mlmodel.load_input_example(str(model_dir))
    except Exception as exc:  # an unreadable example only costs us probe rows
        log.info("no input example in %s: %s", model_dir, exc)
        example = None
    problem = verify(
        compiled,
        reference,
        probe_rows(columns, compiled, example if isinstance(example, pd.DataFrame) else None),
    )
    if problem is not None:
        log.warning("%s: scoring through the pipeline (%s)", model_dir, problem)
        return reference
    return compiled


def _load(model_dir: Path) -> LoadedModel:
    if not (model_dir / "MLmodel").is_file():
        raise ModelLoadError(
            f"no MLflow model at {model_dir} (set ${MODEL_DIR_ENV} to the "
            "directory holding MLmodel)"
        )
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

    from mlfolio.errors import ServeError
    from mlfolio.serve.columns import columns_from_signature, model_id_column
    from mlfolio.serve.scorer import pipeline_steps

    pipeline = mlflow.sklearn.load_model(str(model_dir))
    mlmodel = Model.load(str(model_dir / "MLmodel"))
    coercer = pipeline_steps(pipeline)[0]
    try:
        columns = columns_from_signature(
            mlmodel.signature,
            getattr(coercer, "numeric", None) or (),
            getattr(coercer, "categorical", None) or (),
        )
    except ServeError as exc:
        raise ModelLoadError(f"{model_dir}: {exc}") from None
    scorer = _scorer(pipeline, columns, mlmodel, model_dir)
    log.info(
        "loaded model from %s (version %s, threshold %s, scorer %s)",
        model_dir,
        meta.get("model_version"),
        threshold,
        scorer.name,
    )
    return LoadedModel(
        pipeline,
        tuple(columns),
        threshold,
        meta.get("model_version"),
        model_dir,
        scorer,
        model_id_column(mlmodel),
    )


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


# -- scoring: mlfolio serve's contract ---------------------------------------------------
def score(body: bytes, csv: bool, model: LoadedModel) -> tuple[Any, Any]:
    """Parse and check a request body as the server does; (probabilities, labels)."""
    import numpy as np

    from mlfolio.serve.protocols.mlflow import parse_mlflow_json
    from mlfolio.serve.protocols.sagemaker import parse_csv

    parser = parse_csv if csv else parse_mlflow_json
    batch = parser(body, model.request_columns)  # the id column is split off: never scored
    try:
        proba = np.asarray(model.scorer.predict_proba(batch))
    except Exception as exc:  # the server's rule: bad rows are a 400, the rest a 500
        raise scoring_error(exc) from exc
    return proba, (proba[:, 1] >= model.threshold).astype(int)


def answer(proba: Any, labels: Any, model: LoadedModel, request_id: str) -> dict[str, Any]:
    """The server's /invocations document."""
    from mlfolio.serve.protocols.mlflow import predictions_doc

    return predictions_doc(proba, labels, model.threshold, request_id)


# -- events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpRequest:
    version: str  # "1.0" (REST API) or "2.0" (HTTP API)
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    gateway_request_id: str | None = None  # API Gateway's requestContext.requestId


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
        path = path[len(stage) + 1 :]
    path = path.rstrip("/") or "/"
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw = event.get("body")
    if raw is None:
        body = b""
    elif event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(
                f"body: isBase64Encoded is true but the body is not valid base64 ({exc})"
            ) from None
    else:
        body = raw.encode() if isinstance(raw, str) else bytes(raw)
    gateway_id = ctx.get("requestId")
    return HttpRequest(
        version, method.upper(), path, headers, body, str(gateway_id) if gateway_id else None
    )


def _response(status: int, doc: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**JSON_HEADERS, **(headers or {})},
        "body": json.dumps(doc),
        "isBase64Encoded": False,
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The server's MLflow-style error document."""
    return {
        "statusCode": status,
        "headers": {**JSON_HEADERS, **(headers or {})},
        "body": error_body(INVOCATIONS_PATH, status, message).decode(),
        "isBase64Encoded": False,
    }


def _version_header(model: LoadedModel) -> dict[str, str]:
    return {"X-Model-Version": model.model_version} if model.model_version else {}


def _request_id(req: HttpRequest) -> str:
    """The client's X-Request-ID (as the server checks it), else API Gateway's id."""
    given = check_id(req.headers.get("x-request-id"), "X-Request-ID")
    return given or req.gateway_request_id or uuid.uuid4().hex


def _invocations(req: HttpRequest, model: LoadedModel, request_id: str) -> dict[str, Any]:
    content_type = req.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    if media == "text/csv":
        csv = True
    elif media in ("application/json", "") or media.endswith("+json"):
        csv = False
    else:
        raise RequestError(
            f"Content-Type {content_type!r} is not supported: send application/json or text/csv",
            status=415,
        )
    proba, labels = score(req.body, csv, model)
    headers = {**_version_header(model), "X-Request-ID": request_id}
    if "text/csv" in req.headers.get("accept", ""):
        from mlfolio.serve.protocols.sagemaker import csv_answer

        return {
            "statusCode": 200,
            "headers": {"Content-Type": "text/csv", **headers},
            "body": csv_answer(proba, labels),
            "isBase64Encoded": False,
        }
    return _response(200, answer(proba, labels, model, request_id), headers)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point (``mlfolio.lambda_handler.handler``)."""
    try:
        req = parse_event(event if isinstance(event, dict) else {})
    except RequestError as exc:
        return _error(exc.status, str(exc))
    if req is None:
        return _direct(event, context)
    allowed = ROUTES.get(req.path)
    if allowed is None:
        return _error(
            404, f"no route {req.method} {req.path}; routes: GET /ping, POST /invocations"
        )
    if req.method != allowed:
        return _error(
            405,
            f"{req.method} {req.path} is not allowed; use {allowed}",
            headers={"Allow": allowed},
        )
    try:
        model = get_model()
    except ModelLoadError as exc:
        log.error("model not loaded: %s", exc)
        return _error(503, f"model not loaded: {exc}")
    if req.path == "/ping":
        return _response(
            200,
            {"status": "ok", "model_version": model.model_version, "threshold": model.threshold},
            _version_header(model),
        )
    try:
        request_id = _request_id(req)
    except RequestError as exc:
        return _error(exc.status, str(exc))
    try:
        return _invocations(req, model, request_id)
    except RequestError as exc:
        return _error(exc.status, str(exc), {"X-Request-ID": request_id})
    except Exception:  # one bad request must not look like a platform failure
        log.exception("scoring failed")
        return _error(500, "scoring failed; see the function's logs", {"X-Request-ID": request_id})


def _direct(event: Any, context: Any = None) -> dict[str, Any]:
    """``aws lambda invoke`` with a scoring document as the payload: the answer document,
    or the error document."""
    request_id = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    try:
        model = get_model()
        proba, labels = score(json.dumps(event).encode(), False, model)
        return answer(proba, labels, model, request_id)
    except RequestError as exc:
        return json.loads(error_body(INVOCATIONS_PATH, exc.status, str(exc)))
    except ModelLoadError as exc:
        return {"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"model not loaded: {exc}"}
