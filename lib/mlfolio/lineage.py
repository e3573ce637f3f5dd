"""Which rows a model has seen, recorded with it, and the test rows a comparison may use.

Every logged model carries the keys (:func:`mlfolio.rowkeys.row_keys`) of the rows it was
trained, tuned and given its threshold on (its run's train and valid splits) as
``lineage/seen_rows.parquet`` in its MLflow run: one sorted uint64 column, 8 bytes a row
(16 MB at 2M rows), exact. A Bloom filter would be smaller but wrongly call a share of
unseen rows seen; with 64-bit keys a false match needs a hash collision (about 1e-7 for
2M seen and 1M test rows). A version logged before this file existed is read from its
run folder's splits (or the pipeline run's ``data/`` artifacts), and the answer says which
source it came from.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio import products, rowkeys
from mlfolio.config import SchemaConfig
from mlfolio.errors import DataValidationError

log = logging.getLogger(__name__)

ARTIFACT_DIR = "lineage"
SEEN_FILE = Path(products.SEEN_ROWS.path).name
KEY_COLUMN = "row_key"


def seen_keys(parts: dict[str, pd.DataFrame], schema: SchemaConfig) -> np.ndarray:
    """Sorted unique keys of the rows a model of this run saw: train and valid."""
    keys = [rowkeys.row_keys(parts[name], schema) for name in ("train", "valid")]
    return np.unique(np.concatenate(keys))


def write_keys(path: Path, keys: np.ndarray) -> Path:
    """``keys`` as a one-column Parquet file (``row_key``, uint64)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({KEY_COLUMN: np.asarray(keys, dtype=np.uint64)}).to_parquet(path, index=False)
    return path


def read_keys(path: str | Path) -> np.ndarray:
    """The ``row_key`` column of a keys file, as sorted unique uint64."""
    frame = pd.read_parquet(path)
    if KEY_COLUMN not in frame.columns:
        raise DataValidationError(
            f"{path}: no {KEY_COLUMN!r} column (expected the row keys mlfolio.rowkeys.row_keys "
            f"writes; columns: {', '.join(map(str, frame.columns))})"
        )
    return np.unique(frame[KEY_COLUMN].to_numpy(dtype=np.uint64))


@dataclass(frozen=True)
class Seen:
    """The rows a version saw, and where that came from (``source``)."""

    keys: np.ndarray
    source: str


def _from_artifact(run_id: str) -> Seen | None:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{SEEN_FILE}", dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        return Seen(read_keys(path), f"runs:/{run_id}/{ARTIFACT_DIR}/{SEEN_FILE}")


def _from_splits(folder: Path, schema: SchemaConfig, source: str) -> Seen | None:
    paths = [folder / f"{name}.parquet" for name in ("train", "valid")]
    if not all(p.is_file() for p in paths):
        return None
    parts = dict(zip(("train", "valid"), map(pd.read_parquet, paths), strict=True))
    return Seen(seen_keys(parts, schema), source)


def _from_pipeline_artifacts(pipeline_run: str, schema: SchemaConfig) -> Seen | None:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name in ("train", "valid"):
                mlflow.artifacts.download_artifacts(
                    run_id=pipeline_run, artifact_path=f"data/{name}.parquet", dst_path=tmp
                )
        except (MlflowException, OSError):
            return None
        found = Path(tmp) / "data"
        return _from_splits(found, schema, f"runs:/{pipeline_run}/data/{{train,valid}}.parquet")


def seen_by(ref: Any, schema: SchemaConfig) -> Seen | None:
    """The rows registered version ``ref`` (a :class:`mlfolio.registry.ModelRef`) saw: its
    run's lineage artifact, else its run folder's train and valid splits, else the
    pipeline run's ``data/`` artifacts; None when none of them is readable."""
    from mlfolio import registry

    if ref.run_id and (seen := _from_artifact(ref.run_id)) is not None:
        return seen
    tags = registry.version_tags(ref)
    run_dir = tags.get("mlfolio.run_dir")
    if run_dir:
        folder = Path(run_dir) / "data"
        seen = _from_splits(folder, schema, f"run folder {folder}/{{train,valid}}.parquet")
        if seen is not None:
            return seen
    pipeline_run = tags.get("mlfolio.pipeline_run_id")
    if pipeline_run:
        return _from_pipeline_artifacts(pipeline_run, schema)
    return None
