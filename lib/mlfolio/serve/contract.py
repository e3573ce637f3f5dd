"""The serving contract shared by ``mlfolio serve``, the Lambda handler and the deploy
targets: routes, the token variable, error bodies, request ids, model-URI parsing.

Standard library only (no pandas, NumPy or FastAPI): the deploy targets import it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlfolio.errors import RequestError, ServeError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_THRESHOLD = 0.5
MAX_BODY_BYTES = 10 * 1024 * 1024
TOKEN_ENV = "MLFOLIO_SERVE_TOKEN"
# Routes the deploy targets point probes and scrapers at; the probes carry no data and are
# called without credentials (load balancers, SageMaker, Kubernetes), so they stay open.
LIVENESS_PATH = "/ping"
READINESS_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"
INVOCATIONS_PATH = "/invocations"
OPEN_ROUTES = frozenset({LIVENESS_PATH, "/v2/health/live", READINESS_PATH})
MAX_ID_LENGTH = 128

_MLFLOW_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "BAD_REQUEST",
    413: "REQUEST_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    503: "TEMPORARILY_UNAVAILABLE",
    500: "INTERNAL_ERROR",
}


def error_body(path: str, status: int, message: str) -> bytes:
    """``{"error": ...}`` under /v2 (Open Inference Protocol), MLflow's REST error elsewhere."""
    if path.startswith("/v2"):
        return json.dumps({"error": message}).encode()
    code = _MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST")
    return json.dumps({"error_code": code, "message": message}).encode()


_MODEL_URI_FORMS = "models:/<name>@<alias>, models:/<name>/<version> or an MLflow model directory"
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
        raise ServeError(f"--model {uri!r}: not an MLflow model directory (no MLmodel file in it)")
    return path.resolve()


def scoring_error(exc: Exception) -> BaseException:
    """What a failed ``predict_proba`` becomes: a 400 for rows the model refuses (ValueError,
    TypeError), else a 500, logged."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ValueError | TypeError):
        return RequestError(f"the model could not score these rows: {exc}")
    log.error("predict_proba failed", exc_info=exc)
    return RequestError(f"predict_proba failed: {type(exc).__name__}: {exc}", 500)


def check_id(value: str | None, name: str) -> str | None:
    """An id header (X-Request-ID, X-Entity-ID) as given, or a RequestError naming it."""
    if value is not None and (not 0 < len(value) <= MAX_ID_LENGTH or not value.isprintable()):
        raise RequestError(
            f"{name} header: expected 1 to {MAX_ID_LENGTH} printable characters, got {len(value)}"
        )
    return value
