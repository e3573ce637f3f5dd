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

from mlfolio.config import Config, project_dir

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
def stage_run(cfg: Config, stage: str, parent_run_id: str = "", run_dir: Path | None = None,
              interactive: bool = False) -> Iterator[mlflow.ActiveRun]:
    """A child run of the pipeline's parent run (a top-level run when there is no parent);
    tagged ``mlfolio.interactive`` when a person runs the notebook without a run folder."""
    configure(cfg)
    tags = {"mlfolio.stage": stage, "mlfolio.interactive": str(interactive).lower()}
    if run_dir is not None:
        tags["mlfolio.run_dir"] = str(run_dir)
    with mlflow.start_run(
        run_name=stage, parent_run_id=parent_run_id or None, tags=tags
    ) as run:
        yield run


def child_run(name: str, tags: dict[str, str] | None = None) -> contextlib.AbstractContextManager:
    """A run nested under the active run (a baseline model, a tuning trial)."""
    return mlflow.start_run(run_name=name, nested=True, tags=tags)


def log_model(pipeline: Any, input_example: pd.DataFrame, name: str = "model") -> str:
    """Log a fitted sklearn pipeline with signature and input example; return its model URI.

    cloudpickle, not MLflow's skops default: the pipeline holds mlfolio's own transformer
    and an XGBClassifier, which skops would refuse without a trusted-types list.
    """
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = input_example.head(5)
    signature = infer_signature(example, pipeline.predict_proba(example)[:, 1])
    info = mlflow.sklearn.log_model(
        pipeline,
        name=name,
        signature=signature,
        input_example=example,
        serialization_format="cloudpickle",
        pip_requirements=MODEL_REQUIREMENTS,
        pyfunc_predict_fn="predict_proba",
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
