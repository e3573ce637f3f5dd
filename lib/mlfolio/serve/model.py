"""The served model: resolved in the registry once (or read from a model directory), loaded,
its threshold read from the version's tag, its scorer chosen."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlfolio.errors import NotCompilable, ServeError
from mlfolio.serve.columns import Column, columns_from_signature, model_id_column
from mlfolio.serve.contract import (
    DEFAULT_THRESHOLD,
    MODEL_NAME_ENV,
    MODEL_VERSION_ENV,
    THRESHOLD_ENV,
    model_directory,
    parse_model_uri,
)
from mlfolio.serve.scorer import CompiledScorer, PipelineScorer, pipeline_steps, probe_rows, verify

log = logging.getLogger(__name__)


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
            "status": "ok",
            "model": self.name,
            "version": self.version,
            "alias": self.alias,
            "model_uri": self.uri,
            "requested_uri": self.requested_uri,
            "run_id": self.run_id,
            "data_hash": self.data_hash,
            "threshold": self.threshold,
            "run_dir": self.tags.get("mlfolio.run_dir"),
            "scorer": self.scorer.name,
            "scorer_note": self.scorer_note or None,
            "loaded_at": self.loaded_at,
            "columns": {c.name: c.kind for c in self.columns},
            "id_column": self.id_column,
        }


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
    return _DirectoryVersion(
        os.environ.get(MODEL_NAME_ENV) or path.name,
        os.environ.get(MODEL_VERSION_ENV) or "0",
        run_id,
        tags,
    )


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the project's sqlite:///<project>/mlflow.db (as `run`)."""
    from mlfolio.config import project_dir

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_dir() / 'mlflow.db'}"


def load(model_uri: str, tracking_uri: str | None = None, scorer: str = "auto") -> ServedModel:
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
            mv = (
                client.get_model_version_by_alias(name, alias)
                if alias
                else client.get_model_version(name, version)
            )
            download_uri = client.get_model_version_download_uri(name, mv.version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=download_uri, tracking_uri=tracking_uri
            )
        except MlflowException as exc:
            raise ServeError(f"{model_uri} in {tracking_uri}: {exc.message}") from exc
        meta = Model.load(local)
        served_uri = f"models:/{name}/{mv.version}"
    if "sklearn" not in meta.flavors:
        raise ServeError(f"{model_uri}: not a scikit-learn model (flavors {sorted(meta.flavors)})")
    pipeline = mlflow.sklearn.load_model(local)
    if not hasattr(pipeline, "predict_proba"):
        raise ServeError(f"{model_uri}: the model has no predict_proba")
    classes = getattr(pipeline, "classes_", None)
    if classes is not None and len(classes) != 2:
        raise ServeError(
            f"{model_uri}: a binary classifier is expected, the model has classes {list(classes)}"
        )
    coercer = pipeline_steps(pipeline)[0]
    columns = columns_from_signature(
        meta.signature,
        getattr(coercer, "numeric", None) or (),
        getattr(coercer, "categorical", None) or (),
    )
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
            rows = probe_rows(
                columns, compiled, example if isinstance(example, pd.DataFrame) else None
            )
            problem = verify(compiled, reference, rows)
        except NotCompilable as exc:
            problem = f"pipeline not compiled: {exc}"
        if problem is None:
            chosen = compiled
        else:
            note = problem
            log.warning("%s: scoring through the pipeline (%s)", model_uri, problem)
    return ServedModel(
        name=name,
        version=str(mv.version),
        alias=alias,
        uri=served_uri,
        requested_uri=model_uri,
        run_id=mv.run_id,
        tags=tags,
        threshold=threshold,
        columns=columns,
        scorer=chosen,
        tracking_uri=tracking_uri,
        scorer_note=note,
        id_column=model_id_column(meta),
    )
