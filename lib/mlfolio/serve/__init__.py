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
``predict_proba`` call, each caller getting its own slice back: on the event loop for up to
64 rows of the compiled scorer (cheaper than a thread hand-off), in a worker thread for
bigger batches and for the sklearn pipeline. Nothing waits for a batch to fill, so a lone
request is scored at once. mlfolio's own pipelines
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

Modules: :mod:`~mlfolio.serve.contract` (routes, token variable, error bodies, model URIs;
standard library only), :mod:`~mlfolio.serve.columns` (signature checks),
:mod:`~mlfolio.serve.protocols` (``mlflow``, ``sagemaker``, ``v2``),
:mod:`~mlfolio.serve.scorer`, :mod:`~mlfolio.serve.model` (loading),
:mod:`~mlfolio.serve.batching`, :mod:`~mlfolio.serve.routing`, :mod:`~mlfolio.serve.metrics`,
:mod:`~mlfolio.serve.gate` (middleware), :mod:`~mlfolio.serve.app` and
:mod:`~mlfolio.serve.server` (the process, :class:`~mlfolio.serve.server.ServeOptions`).
Names are re-exported here lazily, so that ``import mlfolio.serve.contract`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from mlfolio.errors import NotCompilable, RequestError, ServeError

# name -> submodule defining it; imported on first use (PEP 562)
_EXPORTS = {
    "DEFAULT_HOST": "contract",
    "DEFAULT_PORT": "contract",
    "DEFAULT_THRESHOLD": "contract",
    "MAX_BODY_BYTES": "contract",
    "TOKEN_ENV": "contract",
    "OPEN_ROUTES": "contract",
    "LIVENESS_PATH": "contract",
    "READINESS_PATH": "contract",
    "METRICS_PATH": "contract",
    "INVOCATIONS_PATH": "contract",
    "error_body": "contract",
    "MODEL_NAME_ENV": "contract",
    "MODEL_VERSION_ENV": "contract",
    "THRESHOLD_ENV": "contract",
    "parse_model_uri": "contract",
    "model_directory": "contract",
    "MAX_ID_LENGTH": "contract",
    "scoring_error": "contract",
    "check_id": "contract",
    "Column": "columns",
    "columns_from_signature": "columns",
    "model_id_column": "columns",
    "check_values": "columns",
    "ColumnKind": "columns",
    "Batch": "columns",
    "validate_columns": "columns",
    "text_to_float": "columns",
    "MAX_JSON_DEPTH": "protocols",
    "json_depth": "protocols",
    "load_json": "protocols",
    "MLFLOW_FORMATS": "protocols.mlflow",
    "parse_mlflow_json": "protocols.mlflow",
    "parse_csv": "protocols.sagemaker",
    "V2Request": "protocols.v2",
    "v2_parameters": "protocols.v2",
    "parse_v2": "protocols.v2",
    "v2_response": "protocols.v2",
    "Scorer": "scorer",
    "PipelineScorer": "scorer",
    "CompiledScorer": "scorer",
    "probe_rows": "scorer",
    "verify": "scorer",
    "ServedModel": "model",
    "default_tracking_uri": "model",
    "load": "model",
    "LATENCY_BUCKETS": "metrics",
    "ROW_BUCKETS": "metrics",
    "REQUEST_BUCKETS": "metrics",
    "SCORE_BUCKETS": "metrics",
    "ServerMetrics": "metrics",
    "MAX_BATCH_ROWS": "options",
    "RowMeta": "batching",
    "Scores": "batching",
    "MicroBatcher": "batching",
    "MAX_INFLIGHT_BYTES": "options",
    "route_share": "routing",
    "routing_mode": "options",
    "Router": "routing",
    "Routing": "routing",
    "create_app": "app",
    "ServeOptions": "options",
    "serve": "server",
}
_ALIASES = {"_text_to_float": "text_to_float"}  # the name tests know it by

__all__ = ["NotCompilable", "RequestError", "ServeError", *_EXPORTS]


def __getattr__(name: str) -> Any:
    target = _ALIASES.get(name, name)
    module = _EXPORTS.get(target)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), target)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
