"""Monitoring the champion: drift, Evidently's reports, the retraining policy, Prometheus.

- :mod:`~mlfolio.monitor.drift`: the drift verdict (Evidently's rules, numpy speed),
  prediction drift and the coercion both share;
- :mod:`~mlfolio.monitor.evidently_reports`: Evidently 0.7, imported lazily;
- :mod:`~mlfolio.monitor.policy`: quality comparison, the retraining decision and rows;
- :mod:`~mlfolio.monitor.document`: :class:`DriftDoc`, the ``drift.json`` the monitor
  writes and the model server reads;
- :mod:`~mlfolio.monitor.prometheus`: the verdict and the A/B report as gauges, for a
  textfile collector and for the model server (:func:`publish_for_server`,
  :func:`publish_ab_for_server`).

The names below are re-exported so ``from mlfolio import monitor; monitor.drift_verdict``
works as before the split.
"""

from mlfolio.monitor.document import DriftDoc, PerformanceEstimate
from mlfolio.monitor.drift import (
    DEFAULT_DRIFT_SHARE,
    FEW_VALUES,
    LARGE_REFERENCE_ROWS,
    METHODS,
    coerce_frame,
    drift_verdict,
    prediction_drift,
)
from mlfolio.monitor.evidently_reports import (
    PREDICTION_COLUMN,
    REPORT_SAMPLE_ROWS,
    evidently_quality_report,
    evidently_report,
    evidently_verdict,
)
from mlfolio.monitor.policy import (
    RetrainDecision,
    quality_comparison,
    retrain_decision,
    retraining_data,
    retraining_rows,
)
from mlfolio.monitor.prometheus import (
    SERVER_AB_FILE,
    SERVER_DRIFT_FILE,
    ab_gauge_families,
    drift_gauge_families,
    publish_ab_for_server,
    publish_for_server,
    write_prometheus_textfile,
)

__all__ = [
    "DEFAULT_DRIFT_SHARE",
    "DriftDoc",
    "FEW_VALUES",
    "LARGE_REFERENCE_ROWS",
    "METHODS",
    "PREDICTION_COLUMN",
    "PerformanceEstimate",
    "REPORT_SAMPLE_ROWS",
    "SERVER_AB_FILE",
    "SERVER_DRIFT_FILE",
    "RetrainDecision",
    "ab_gauge_families",
    "coerce_frame",
    "drift_gauge_families",
    "drift_verdict",
    "evidently_quality_report",
    "evidently_report",
    "evidently_verdict",
    "prediction_drift",
    "publish_ab_for_server",
    "publish_for_server",
    "quality_comparison",
    "retrain_decision",
    "retraining_data",
    "retraining_rows",
    "write_prometheus_textfile",
]
