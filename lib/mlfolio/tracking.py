"""MLflow behind one module: tracking URI, experiments, parent/child runs, model logging.

MLflow's API moves fast (``name=`` replaced ``artifact_path=``, stages gave way to
aliases, skops became the sklearn default); every call into it lives here or in
:mod:`mlfolio.registry`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from mlfolio.config import Config, SchemaConfig, project_dir
from mlfolio.errors import MlfolioError

log = logging.getLogger(__name__)

# Written explicitly: letting MLflow infer requirements costs ~10 s per logged model.
MODEL_REQUIREMENTS = ["mlflow", "scikit-learn", "xgboost", "pandas", "numpy", "cloudpickle"]


def configure(cfg: Config) -> str:
    """Point MLflow at the run's tracking store; return the experiment id (created if new)."""
    uri = cfg.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = cfg.tracking.artifact_location
    if location is None and not uri.startswith(("http://", "https://", "databricks")):
        location = (project_dir() / "mlartifacts").as_uri()
    exp_id = client.create_experiment(cfg.experiment_name, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def start_parent_run(cfg: Config, run_dir: Path, tags: dict[str, str] | None = None) -> str:
    """Create the pipeline's parent run (left open in the store); return its id."""
    exp_id = configure(cfg)
    run = MlflowClient().create_run(
        exp_id,
        run_name=run_dir.name,
        tags={"mlfolio.run_dir": str(run_dir), "mlfolio.kind": "pipeline", **(tags or {})},
    )
    return run.info.run_id


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
    """The served contract: numeric columns double (integers accepted), categorical string."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [*(ColSpec("double", c) for c in numeric), *(ColSpec("string", c) for c in categorical)]
        ),
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

    The signature comes from ``schema`` (else the pipeline's RawColumnCoercer), not from
    the example's dtypes: raw rows hold ``totalcharges`` as text and flags as ints, which
    would make the served contract refuse numbers and warn about integer columns. The
    schema's id column goes into the MLmodel metadata, where ``mlfolio serve`` and the
    Lambda handler read it (accepted in requests, never given to the model).

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


def run_url(cfg: Config, experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI."""
    return f"{cfg.tracking.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Attach files (executed notebooks, HTML) to a run."""
    client = MlflowClient()
    for path in paths:
        if path.exists():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
