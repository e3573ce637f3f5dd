"""The monitor's verdict document (``drift.json``): written by the monitor stage into its run
folder and, for the model server's ``/metrics``, into the prediction-log folder; read by
the server, the textfile collector and the terminal summary. One declared model for the
writer and the readers; the JSON keys on disk are the ones the monitor always wrote."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Part(BaseModel):
    # Keys a later monitor adds are kept, not refused: an older server still reads the file.
    model_config = ConfigDict(extra="allow", frozen=True)


class MonitoredModel(_Part):
    """The model version that was monitored: the gauges' ``model`` and ``version`` labels."""

    name: str
    version: str | int
    alias: str | None = None
    run_dir: str | None = None
    threshold: float | None = None


class PredictionDrift(_Part):
    """Drift of the model's positive-class scores (:func:`~mlfolio.monitor.prediction_drift`)."""

    score: float | None = None
    drifted: bool | None = None


class Quality(_Part):
    """Metrics on the labelled current rows next to the reference's, and the deltas."""

    reference: dict[str, float | None] = {}
    current: dict[str, float | None] = {}
    delta: dict[str, float | None] = {}


class PerformanceEstimate(_Part):
    """The champion's metrics on the current rows estimated without labels
    (:func:`mlfolio.estimate.estimate_performance`, CBPE) and, once labels arrived, next to
    the realised ones (:func:`mlfolio.estimate.compare_with_realised`)."""

    method: str = "cbpe"
    rows: int | None = None
    roc_auc: float | None = None
    roc_auc_ci: list[float] | None = None
    pr_auc: float | None = None
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    accuracy: float | None = None
    intervals: dict[str, list[float] | None] = {}
    confidence: float | None = None
    calibration_error: float | None = None  # ECE of the calibration on its reference rows
    calibration: dict[str, Any] | None = None  # method, where it came from, its quality
    reference_roc_auc: float | None = None  # the champion's ROC AUC on its test rows
    roc_auc_delta: float | None = None  # estimated minus reference
    realised: dict[str, Any] | None = None  # estimated vs realised on the labelled rows


class DriftDoc(_Part):
    """A ``drift.json`` document. Every field is optional on reading (a document the
    gauges cannot use simply yields fewer gauges); :meth:`to_json` writes back exactly the
    keys that were set, so a document read and written again is unchanged."""

    created_at: str | None = None
    model: MonitoredModel | None = None
    reference: dict[str, Any] | None = None
    current: dict[str, Any] | None = None
    # the drift verdict (:func:`~mlfolio.monitor.drift_verdict`)
    columns: dict[str, Any] | None = None
    drifted_columns: list[str] | None = None
    n_columns: int | None = None
    n_drifted: int | None = None
    share_drifted: float | None = None
    drift_share: float | None = None
    dataset_drift: bool | None = None
    prediction_drift: PredictionDrift | None = None
    quality: Quality | None = None
    performance_estimate: PerformanceEstimate | None = None  # since mlfolio.estimate
    decision: dict[str, Any] | None = None
    monitor_run_dir: str | None = None

    @classmethod
    def of(cls, doc: DriftDoc | dict[str, Any]) -> DriftDoc:
        """``doc`` as a DriftDoc; a pydantic ValidationError (a ValueError) names the field."""
        return doc if isinstance(doc, DriftDoc) else cls.model_validate(doc)

    def to_json(self) -> dict[str, Any]:
        """The document as written on disk: the keys that were set, in JSON types."""
        return self.model_dump(mode="json", exclude_unset=True)
