"""MLflow behind one module: tracking URI, experiments, parent/child runs, model logging.

MLflow's API moves fast (``name=`` replaced ``artifact_path=``, stages gave way to
aliases, skops became the sklearn default); every call into it lives here or in
:mod:`mlfolio.registry`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from mlfolio.config import Config, SchemaConfig, project_dir
from mlfolio.errors import MlfolioError, TrackingError, masked

log = logging.getLogger(__name__)

# Written explicitly: letting MLflow infer requirements costs ~10 s per logged model.
MODEL_REQUIREMENTS = ["mlflow", "scikit-learn", "xgboost", "pandas", "numpy", "cloudpickle"]


# The experiment's kind, for MLflow's own use; MLflow 3.17's UI takes its view from the
# link instead (see UI_VIEW).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


# -- failing fast and clearly when the store does not answer ---------------------------
BUSY_TIMEOUT_ENV = "MLFOLIO_SQLITE_BUSY_TIMEOUT_MS"
_BUSY_PRAGMA = re.compile(r"^\s*PRAGMA busy_timeout\s*=\s*\d+\s*;?\s*$", re.IGNORECASE)


def apply_limits(cfg: Config) -> None:
    """Bound every tracking call of this process and of the kernels and workers it starts
    (they inherit its environment): ``tracking.request_retries`` and
    ``tracking.request_timeout_s`` for a server (MLflow's own 7 retries and 120 s keep a
    call to a stopped server going ~10 min), ``tracking.sqlite_busy_timeout_s`` for a
    SQLite store another process locked."""
    t = cfg.tracking
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(t.request_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(t.request_timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"  # 1, 2, 4 s between retries
    os.environ[BUSY_TIMEOUT_ENV] = str(int(t.sqlite_busy_timeout_s * 1000))
    install_busy_timeout()


_busy_installed = False


def install_busy_timeout() -> None:
    """MLflow sets ``PRAGMA busy_timeout = 20000`` on every SQLite session it opens; this
    process's engines use $MLFOLIO_SQLITE_BUSY_TIMEOUT_MS instead, when it is set."""
    global _busy_installed
    if _busy_installed:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def rewrite(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
        ms = os.environ.get(BUSY_TIMEOUT_ENV)
        if ms and _BUSY_PRAGMA.match(statement):
            statement = f"PRAGMA busy_timeout = {int(ms)};"
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", rewrite, retval=True)
    _busy_installed = True


def cause(exc: BaseException) -> str:
    """One line saying why a tracking call failed: the database's own message (SQLAlchemy
    adds the SQL and a link), the socket error of a server that does not answer."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPI error: "database is locked"
    if orig is not None:
        return str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    text = str(exc)
    for context in (exc.__cause__, exc.__context__):
        if context is not None and getattr(context, "orig", None) is not None:
            return cause(context)
    if errno := re.search(r"\[Errno -?\d+\] [^'\")\]]+", text):
        return f"no answer ({errno.group(0).strip()})"
    if "Read timed out" in text:
        return "no answer (read timed out)"
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def store_errors() -> tuple[type[BaseException], ...]:
    """What a tracking call raises when its store fails (MLflow wraps some of them)."""
    import requests
    from sqlalchemy.exc import SQLAlchemyError

    return (mlflow.exceptions.MlflowException, SQLAlchemyError, requests.RequestException, OSError)


def store_failure(exc: BaseException, uri: str, what: str) -> TrackingError:
    """The TrackingError naming the store, the call and the cause."""
    return TrackingError(f"tracking store {masked(uri)} failed while {what}: {cause(exc)}")


@contextlib.contextmanager
def guard(uri: str, what: str) -> Iterator[None]:
    """Tracking calls inside raise :class:`TrackingError` (one line) when the store fails."""
    try:
        yield
    except store_errors() as exc:
        raise store_failure(exc, uri, what) from exc


def configure(cfg: Config) -> str:
    """Point MLflow at the run's tracking store; return the experiment id (created if new,
    tagged as model development; an existing one missing the tag gets it)."""
    apply_limits(cfg)
    uri = cfg.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        for key, value in EXPERIMENT_KIND.items():
            if exp.tags.get(key) is None:
                client.set_experiment_tag(exp.experiment_id, key, value)
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = cfg.tracking.artifact_location
    if location is None and not uri.startswith(("http://", "https://", "databricks")):
        location = (project_dir() / "mlartifacts").as_uri()
    try:
        exp_id = client.create_experiment(
            cfg.experiment_name, artifact_location=location, tags=EXPERIMENT_KIND
        )
    except mlflow.exceptions.MlflowException:  # another process created it meanwhile
        exp = client.get_experiment_by_name(cfg.experiment_name)
        if exp is None:
            raise
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def parent_run_name(experiment: str, run_dir: Path, created: datetime, label: str) -> str:
    """A name to read in MLflow's run list: ``churn 2026-12-01 10:02 pipeline 03a34d``
    (UTC; the run folder's short id keeps two runs of one minute apart)."""
    short = run_dir.name.rsplit("-", 1)[-1]
    return f"{experiment} {created.astimezone(UTC):%Y-%m-%d %H:%M} {label} {short}"


def start_parent_run(
    cfg: Config, run_dir: Path, tags: dict[str, str] | None = None, run_name: str | None = None
) -> str:
    """Create the pipeline's parent run (left open in the store); return its id."""
    exp_id = configure(cfg)
    run = MlflowClient().create_run(
        exp_id,
        run_name=run_name or run_dir.name,
        tags={"mlfolio.run_dir": str(run_dir), "mlfolio.kind": "pipeline", **(tags or {})},
    )
    return run.info.run_id


def headline(
    manifest: dict[str, Any], model_kind: str | None = None
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """(metrics, params, tags) that let pipeline runs compare at the top level: the
    candidate's test ROC AUC and PR AUC, the gate (1/0), the version promoted; the
    candidate and its model kind, trials, data rows and hash. Only what the run got to."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    candidate = manifest.get("candidate") or {}
    for key in ("roc_auc", "pr_auc"):
        if (value := (candidate.get("test") or {}).get(key)) is not None:
            metrics[f"test_{key}"] = float(value)
    if (gate := manifest.get("gate")) is not None:
        metrics["gate_passed"] = float(bool(gate.get("passed")))
    model = manifest.get("model") or {}
    if model.get("version"):
        tags["mlfolio.model_version"] = str(model["version"])
        if model.get("promoted"):
            metrics["promoted_version"] = float(model["version"])
            tags["mlfolio.promoted_version"] = str(model["version"])
    if candidate.get("name"):
        params["candidate"] = str(candidate["name"])
    if model_kind:
        params["model_kind"] = model_kind
    parameters = manifest.get("parameters") or {}
    tuning = parameters.get("tuning") or {}
    if tuning:
        params["tuned_model"] = str(tuning.get("model")) if tuning.get("enabled") else "none"
        params["n_trials"] = str(tuning.get("n_trials") if tuning.get("enabled") else 0)
    if models := (parameters.get("training") or {}).get("models"):
        params["baseline_models"] = ",".join(models)
    if (data := manifest.get("data") or {}).get("rows") is not None:
        params["data_rows"] = str(data["rows"])
    if manifest.get("data_hash"):
        tags["mlfolio.data_hash"] = str(manifest["data_hash"])
        params["data_hash"] = str(manifest["data_hash"])[:12]
    return metrics, params, tags


def log_headline(run_id: str, manifest: dict[str, Any], model_kind: str | None = None) -> None:
    """Put :func:`headline` on the pipeline's parent run. A parameter MLflow already holds
    with another value (a stage re-run with ``--force``) stays, with a warning: MLflow
    parameters cannot change. One request for all of it (``log_batch``)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    metrics, params, tags = headline(manifest, model_kind)
    client = MlflowClient()
    held = client.get_run(run_id).data.params
    for key in params.keys() & held.keys():
        if held[key] != params[key]:
            log.warning(
                "parent run %s keeps parameter %s=%s (now %s)", run_id, key, held[key], params[key]
            )
    now = get_current_time_millis()
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
        params=[Param(key, value) for key, value in params.items() if key not in held],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )


def end_run(run_id: str, status: str) -> None:
    """Close a run opened by :func:`start_parent_run` (FINISHED or FAILED)."""
    MlflowClient().set_terminated(run_id, status=status)


@contextlib.contextmanager
def stage_run(
    cfg: Config,
    stage: str,
    parent_run_id: str = "",
    run_dir: Path | None = None,
    interactive: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """A child run of the pipeline's parent run (a top-level run when there is no parent);
    tagged ``mlfolio.interactive`` when a person runs the notebook without a run folder."""
    configure(cfg)
    tags = {"mlfolio.stage": stage, "mlfolio.interactive": str(interactive).lower()}
    if run_dir is not None:
        tags["mlfolio.run_dir"] = str(run_dir)
    with mlflow.start_run(run_name=stage, parent_run_id=parent_run_id or None, tags=tags) as run:
        yield run


def child_run(name: str, tags: dict[str, str] | None = None) -> contextlib.AbstractContextManager:
    """A run nested under the active run (a baseline model, a tuning trial)."""
    return mlflow.start_run(run_name=name, nested=True, tags=tags)


def _dataset_schema(df: pd.DataFrame) -> Any:
    """The schema MLflow infers for ``df``, without its Python walk over every value of
    every column (minutes at 2M rows): a text column is recognised by one vectorised
    check, numbers by their dtype; only other object columns go through MLflow's own
    inference. Required = no missing value, as MLflow decides it. None where MLflow's
    dataset has none either (a column it cannot type)."""
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.utils import _infer_pandas_column

    specs = []
    for col in df.columns:
        values = df[col]
        text = values.dtype.kind == "O" and pd.api.types.infer_dtype(values) == "string"
        try:
            kind = DataType.string if text else _infer_pandas_column(values)
        except Exception:  # noqa: BLE001 (MLflow's PandasDataset.schema: None on any error)
            return None
        specs.append(ColSpec(type=kind, name=col, required=not bool(values.isna().any())))
    return Schema(specs)


def pandas_dataset(
    df: pd.DataFrame, source: str, name: str, digest: str, targets: str | None = None
) -> Any:
    """``mlflow.data.from_pandas`` for ``mlflow.log_input``, its schema (what MLflow would
    infer) computed up front by :func:`_dataset_schema`."""
    dataset = mlflow.data.from_pandas(df, source=source, targets=targets, name=name, digest=digest)
    # PandasDataset.schema is a functools.cached_property: its value lives in __dict__.
    dataset.__dict__["schema"] = _dataset_schema(df)
    return dataset


MODEL_METADATA_KEY = "mlfolio"  # MLmodel metadata: the schema the model was trained on


def _schema_columns(
    pipeline: Any, schema: SchemaConfig | None
) -> tuple[list[str], list[str], str | None]:
    """(numeric, categorical, id column): the declared schema's, else the pipeline's own
    RawColumnCoercer's (no id column then)."""
    if schema is not None:
        return list(schema.numeric), list(schema.categorical), schema.id_column
    from mlfolio.features import RawColumnCoercer

    stack = [pipeline]
    while stack:
        step = stack.pop()
        if isinstance(step, RawColumnCoercer):
            return list(step.numeric or []), list(step.categorical or []), None
        stack.extend(s for _, s in getattr(step, "steps", None) or [])
    raise MlfolioError(
        f"log_model: {type(pipeline).__name__} has no RawColumnCoercer step; "
        "pass schema= (the parameter file's schema section) so the signature "
        "can say which columns are numeric and which categorical"
    )


def model_signature(numeric: list[str], categorical: list[str]) -> Any:
    """The columns MLflow's own clients check: every feature by name, of type ``Any``.

    Typed specs would make ``mlflow.pyfunc``, ``mlflow models predict`` and ``mlflow models
    serve`` refuse rows as ``pandas.read_csv`` gives them (a ``double`` column refuses
    int64 tenure and the text of a blank ``totalcharges``, a ``string`` column refuses a
    0/1 flag): the pipeline's RawColumnCoercer reads any of them, so MLflow only checks
    that the columns are there. The declared types are in the MLmodel metadata
    (:data:`MODEL_METADATA_KEY`), where ``mlfolio serve`` and the model card read them."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), c) for c in [*numeric, *categorical]]),
        outputs=Schema([ColSpec("double")]),
    )


def signature_example(
    rows: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> pd.DataFrame:
    """Rows typed as the signature says: numbers as float64 (blank text → NaN), categories
    as text (missing → None), read the way the pipeline's coercer reads them."""
    from mlfolio.features import MISSING_CATEGORY, RawColumnCoercer

    missing = [c for c in [*numeric, *categorical] if c not in rows.columns]
    if missing:
        raise MlfolioError(f"log_model: the input example lacks column(s) {missing}")
    coerced = RawColumnCoercer(numeric, categorical).fit(rows).transform(rows)
    for col in categorical:
        coerced[col] = coerced[col].astype(object).where(coerced[col] != MISSING_CATEGORY, None)
    return coerced.reset_index(drop=True)


def log_model(
    pipeline: Any,
    input_example: pd.DataFrame,
    name: str = "model",
    schema: SchemaConfig | None = None,
) -> str:
    """Log a fitted sklearn pipeline with signature and input example; return its model URI.

    The signature's columns come from ``schema`` (else the pipeline's RawColumnCoercer),
    typed ``Any`` (:func:`model_signature`): MLflow's clients then take raw and typed rows
    alike. The declared types (numeric, categorical) and the schema's id column go into
    the MLmodel metadata, where ``mlfolio serve`` and the Lambda handler read them (the id
    column accepted in requests, never given to the model).

    cloudpickle, not MLflow's skops default: the pipeline holds mlfolio's own transformer
    and an XGBClassifier, which skops would refuse without a trusted-types list.
    """
    import mlflow.sklearn

    numeric, categorical, id_column = _schema_columns(pipeline, schema)
    example = signature_example(input_example.head(5), numeric, categorical)
    info = mlflow.sklearn.log_model(
        pipeline,
        name=name,
        signature=model_signature(numeric, categorical),
        input_example=example,
        serialization_format="cloudpickle",
        pip_requirements=MODEL_REQUIREMENTS,
        pyfunc_predict_fn="predict_proba",
        metadata={
            MODEL_METADATA_KEY: {
                "id_column": id_column,
                "numeric": numeric,
                "categorical": categorical,
            }
        },
    )
    return info.model_uri


def load_model(model_uri: str) -> Any:
    """The sklearn pipeline behind a model URI (runs:/, models:/name@alias, models:/name/3)."""
    import mlflow.sklearn

    return mlflow.sklearn.load_model(model_uri)


# MLflow 3.17's UI takes its view from this query parameter (default: the GenAI view, with
# its traces and token usage; the last one used is remembered in the browser), not from the
# experiment's experimentKind tag: every link we print asks for the model-training view.
UI_VIEW = "workflowType=machine_learning"


def ui_link(ui_url: str, experiment_id: str, run_id: str | None = None) -> str:
    """Link to an experiment (or one of its runs) in the MLflow UI at ``ui_url``, opening
    the model-training view."""
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{ui_url.rstrip('/')}{path}?{UI_VIEW}"


def run_url(cfg: Config, experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI (model-training view)."""
    return ui_link(cfg.tracking.ui_url, experiment_id, run_id)


def experiment_url(cfg: Config, experiment_id: str) -> str:
    """Link to the experiment's runs in the MLflow UI (model-training view)."""
    return ui_link(cfg.tracking.ui_url, experiment_id)


def mlflow_executable() -> str:
    """The ``mlflow`` command beside the running Python, as a person types it from the
    project root (``.venv/bin/mlflow``); its absolute path when the environment lives
    elsewhere; plain ``mlflow`` when there is none beside it."""
    exe = Path(os.path.abspath(sys.executable)).parent / "mlflow"
    if not exe.is_file():
        return "mlflow"
    try:
        return str(exe.relative_to(project_dir()))
    except ValueError:
        return str(exe)


def ui_hint(tracking_uri: str, ui_url: str) -> dict[str, str]:
    """How a reader opens the run links (``ui_url``): for a database store, the ``mlflow
    ui`` command serving it there (host and port from ``ui_url``, one worker), run from
    ``cwd`` (the project root: the command may start with ``.venv/bin/``); for a tracking
    server, the server itself (with a note when ``ui_url`` points elsewhere)."""
    if tracking_uri.startswith(("http://", "https://")):
        same = ui_url.rstrip("/") == tracking_uri.rstrip("/")
        note = "" if same else f"tracking.ui_url is {ui_url}: set it to {tracking_uri}"
        return {"server": tracking_uri, "note": note}
    if tracking_uri.startswith("databricks"):
        return {"server": tracking_uri, "note": "open the run in the Databricks workspace"}
    url = urlsplit(ui_url)
    command = [mlflow_executable(), "ui", "--backend-store-uri", tracking_uri]
    if url.hostname not in (None, "127.0.0.1", "localhost"):  # mlflow ui binds 127.0.0.1
        command += ["--host", url.hostname]
    port = url.port or (443 if url.scheme == "https" else 80)
    if port != 5000:  # mlflow ui's default
        command += ["--port", str(port)]
    # one worker: mlflow ui starts four by default (~1.4 GB), a reader needs one
    command += ["--workers", "1"]
    return {"command": shlex.join(command), "cwd": str(project_dir())}


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Attach files (executed notebooks, HTML) to a run."""
    client = MlflowClient()
    for path in paths:
        if path.exists():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_calibration(run_id: str, calibration: Any) -> str:
    """Ship ``calibration`` (an :class:`mlfolio.estimate.Calibration`) with the model logged
    in run ``run_id``, as its ``calibration.json`` artifact: every version registered from
    that run carries it (:func:`load_calibration`). Returns the artifact's URI."""
    from mlfolio.estimate import CALIBRATION_FILE

    MlflowClient().log_dict(run_id, calibration.to_json(), CALIBRATION_FILE)
    return f"runs:/{run_id}/{CALIBRATION_FILE}"


def load_calibration(run_id: str | None) -> Any:
    """The :class:`mlfolio.estimate.Calibration` shipped with the model of run ``run_id``
    (:func:`log_calibration`); None when that run has none (a version evaluated before
    calibrations were shipped). A file that is not a calibration raises ValueError naming
    it."""
    import json

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from mlfolio.estimate import CALIBRATION_FILE, Calibration

    if not run_id:
        return None
    uri = f"runs:/{run_id}/{CALIBRATION_FILE}"
    try:
        text = mlflow.artifacts.load_text(uri)
    except (MlflowException, OSError) as exc:
        log.info("%s: no calibration shipped (%s)", uri, cause(exc))
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: not JSON ({exc})") from exc
    return Calibration.from_json(doc, uri)
