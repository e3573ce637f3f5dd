"""Evidently 0.7's reports and verdict, behind one module (its API moves fast).

:func:`evidently_verdict` runs the ``DataDriftPreset`` on the full frames (slow on big
data: the monitor stage uses :func:`mlfolio.monitor.drift.drift_verdict`);
:func:`evidently_report` writes the drift report's HTML on a seeded sample, with the
model's scores as a ``prediction`` column; :func:`evidently_quality_report` writes the
``ClassificationPreset`` report of labelled rows. Evidently (~5 s to import) is imported
only inside these functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.config import SchemaConfig
from mlfolio.errors import DataValidationError
from mlfolio.monitor.drift import DEFAULT_DRIFT_SHARE, _coerce, coerce_frame

log = logging.getLogger(__name__)

REPORT_SAMPLE_ROWS = 5000
PREDICTION_COLUMN = "prediction"  # the model's positive-class score, in reports


def _evidently_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: SchemaConfig,
    drift_share: float,
    prediction: tuple[np.ndarray, np.ndarray] | None = None,
    **thresholds: Any,
) -> Any:
    from evidently import DataDefinition, Dataset, Report  # ~5 s import: only here
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    extra = [PREDICTION_COLUMN] if prediction is not None else []
    definition = DataDefinition(
        numerical_columns=list(schema.numeric) + extra, categorical_columns=list(schema.categorical)
    )
    ref = coerce_frame(reference, schema, "reference")
    cur = coerce_frame(current, schema, "current")
    if prediction is not None:
        ref[PREDICTION_COLUMN] = np.asarray(prediction[0], dtype=float)
        cur[PREDICTION_COLUMN] = np.asarray(prediction[1], dtype=float)
    preset = DataDriftPreset(
        columns=list(schema.features),
        drift_share=drift_share,
        **{k: v for k, v in thresholds.items() if v is not None},
    )
    # The score apart from the preset: inside it, the report's headline ("N of M columns
    # drifted") would count it as a feature and disagree with the verdict's share.
    score = [ValueDrift(column=PREDICTION_COLUMN)] if prediction is not None else []
    report = Report([preset, *score], include_tests=True)
    return report.run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )


def _thresholds(
    threshold: float | None,
    num_threshold: float | None,
    cat_threshold: float | None,
    per_column_threshold: dict[str, float] | None,
) -> dict[str, Any]:
    return {
        "threshold": threshold,
        "num_threshold": num_threshold,
        "cat_threshold": cat_threshold,
        "per_column_threshold": per_column_threshold,
    }


def _parse_snapshot(snapshot: Any, schema: SchemaConfig, drift_share: float) -> dict[str, Any]:
    data = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {}
    n_drifted = share = None
    for metric in data["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            n_drifted = int(metric["value"]["count"])
            share = float(metric["value"]["share"])
        elif kind.endswith("ValueDrift"):
            columns[config["column"]] = {
                "score": float(metric["value"]),
                "method": config.get("method"),
                "threshold": config.get("threshold"),
            }
    for test in data.get("tests", []):
        name = str(test.get("name", ""))
        prefix = "Value Drift for column "
        if name.startswith(prefix) and name[len(prefix) :] in columns:
            columns[name[len(prefix) :]]["drifted"] = test["status"] == "FAIL"
    if n_drifted is None or share is None:
        raise RuntimeError("Evidently's snapshot has no DriftedColumnsCount metric")
    prediction = columns.pop(PREDICTION_COLUMN, None)
    drifted = [c for c in schema.features if columns.get(c, {}).get("drifted")]
    return {
        "columns": columns,
        "drifted_columns": drifted,
        "n_columns": len(columns),
        "n_drifted": n_drifted,  # the report's headline, as its page shows it
        "share_drifted": share,
        "drift_share": drift_share,
        "dataset_drift": bool(share >= drift_share),
        **({"prediction": prediction} if prediction is not None else {}),
    }


def evidently_verdict(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: SchemaConfig,
    *,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    threshold: float | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    per_column_threshold: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Evidently's own DataDriftPreset verdict on the full frames, shaped like drift_verdict.

    Per-column ``drifted`` comes from the preset's tests (``include_tests=True``), the count
    and share from its ``DriftedColumnsCount`` metric. Slow on big data (see the benchmark).
    """
    _coerce(reference, schema, "reference")
    _coerce(current, schema, "current")
    snapshot = _evidently_snapshot(
        reference,
        current,
        schema,
        drift_share,
        **_thresholds(threshold, num_threshold, cat_threshold, per_column_threshold),
    )
    return _parse_snapshot(snapshot, schema, drift_share)


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: SchemaConfig,
    html_path: str | Path,
    sample_rows: int | None = REPORT_SAMPLE_ROWS,
    seed: int = 42,
    *,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    threshold: float | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    per_column_threshold: dict[str, float] | None = None,
    prediction: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write Evidently's DataDriftPreset report (with tests) to ``html_path``.

    ``prediction`` (reference scores, current scores) adds the model's score as a
    ``prediction`` column, tested apart from the preset: its drift is shown, but the
    report's "drifted columns" count and share are of the features only, as the verdict's.

    Frames longer than ``sample_rows`` are replaced by a seeded random sample
    (``DataFrame.sample(n=sample_rows, random_state=seed)``, each frame separately) so the
    report stays quick and the HTML small (~4 MB at 7k rows); ``sample_rows=None`` keeps all
    rows. The report's verdict is of that sample: use :func:`drift_verdict` for the verdict
    on all rows. Returns the report's verdict plus ``html_path`` and the rows used.
    """
    _coerce(reference, schema, "reference")
    _coerce(current, schema, "current")
    from mlfolio.data import sample

    if prediction is not None:  # keep each score with its row through the sample
        reference = reference.assign(**{PREDICTION_COLUMN: np.asarray(prediction[0])})
        current = current.assign(**{PREDICTION_COLUMN: np.asarray(prediction[1])})
    ref = sample(reference, sample_rows, seed)
    cur = sample(current, sample_rows, seed)
    scores = (
        (ref[PREDICTION_COLUMN].to_numpy(), cur[PREDICTION_COLUMN].to_numpy())
        if prediction is not None
        else None
    )
    snapshot = _evidently_snapshot(
        ref,
        cur,
        schema,
        drift_share,
        scores,
        **_thresholds(threshold, num_threshold, cat_threshold, per_column_threshold),
    )
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    log.info(
        "drift report written to %s (%d reference, %d current rows)", html_path, len(ref), len(cur)
    )
    verdict = _parse_snapshot(snapshot, schema, drift_share)
    verdict.update(
        html_path=str(html_path),
        reference_rows=len(ref),
        current_rows=len(cur),
        sample_rows=sample_rows,
        seed=seed,
    )
    return verdict


def evidently_quality_report(
    reference: pd.DataFrame, current: pd.DataFrame, html_path: str | Path, threshold: float
) -> Path:
    """Evidently's ClassificationPreset, current labelled rows against the reference.

    Both frames have ``target`` (0/1) and ``prediction`` (positive-class score) columns.
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    for name, frame in (("reference", reference), ("current", current)):
        missing = {"target", PREDICTION_COLUMN} - set(frame.columns)
        if missing:
            raise DataValidationError(f"{name}: quality report needs column(s) {sorted(missing)}")
        if len(frame) == 0:
            raise DataValidationError(f"{name}: no labelled rows for the quality report")
    definition = DataDefinition(
        numerical_columns=[PREDICTION_COLUMN],
        classification=[
            BinaryClassification(target="target", prediction_probas=PREDICTION_COLUMN, pos_label=1)
        ],
    )

    def dataset(frame: pd.DataFrame) -> Any:
        out = pd.DataFrame(
            {
                "target": frame["target"].astype(int).to_numpy(),
                PREDICTION_COLUMN: frame[PREDICTION_COLUMN].astype(float).to_numpy(),
            }
        )
        return Dataset.from_pandas(out, data_definition=definition)

    report = Report([ClassificationPreset(probas_threshold=threshold)])
    snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    return html_path
