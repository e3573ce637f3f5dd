"""The latest monitor verdict and A/B report as Prometheus gauges, for alerts.

Two readers: node_exporter's textfile collector (:func:`write_prometheus_textfile`) and
the model server's ``/metrics``, which reads the ``drift.json`` that
:func:`publish_for_server` and the ``ab.json`` that :func:`publish_ab_for_server` put in
its prediction-log folder.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from mlfolio.files import write_json
from mlfolio.monitor.document import DriftDoc

# The file the model server's /metrics reads, in its --prediction-log folder.
SERVER_DRIFT_FILE = "drift.json"
SERVER_AB_FILE = "ab.json"
# The A/B report's action when the challenger is significantly worse (abtest.recommend).
ROLL_BACK = "roll back"


def drift_gauge_families(doc: DriftDoc | dict[str, Any]) -> list[Any]:
    """Gauges for the latest monitor verdict (a ``drift.json`` document), so alerts can fire.

    Used by the model server's ``/metrics`` (from ``<prediction log>/drift.json``) and by
    :func:`write_prometheus_textfile` (node_exporter's textfile collector). Labels name the
    model version that was monitored; quality gauges appear only when labels existed. A
    document that is no :class:`DriftDoc` raises pydantic's ValidationError (a ValueError).
    """
    from prometheus_client.core import GaugeMetricFamily

    drift = DriftDoc.of(doc)
    model = drift.model
    labels = {
        "model": "" if model is None else str(model.name),
        "version": "" if model is None else str(model.version),
    }
    names, values = list(labels), list(labels.values())

    def gauge(name: str, doc_text: str, value: Any) -> GaugeMetricFamily | None:
        if value is None:
            return None
        family = GaugeMetricFamily(name, doc_text, labels=names)
        family.add_metric(values, float(value))
        return family

    current_q = {} if drift.quality is None else drift.quality.current
    est = drift.performance_estimate
    est_ci = (est.roc_auc_ci if est else None) or [None, None]
    side = (est.realised if est else None) or {}
    delta_q = {} if drift.quality is None else drift.quality.delta
    created = drift.created_at
    families = [
        gauge(
            "mlfolio_drift_share",
            "Share of feature columns that drifted (latest monitor run)",
            drift.share_drifted,
        ),
        gauge(
            "mlfolio_drift_columns",
            "Feature columns that drifted (latest monitor run)",
            drift.n_drifted,
        ),
        gauge(
            "mlfolio_dataset_drift",
            "1 when the latest monitor run found dataset drift",
            None if drift.dataset_drift is None else int(drift.dataset_drift),
        ),
        gauge(
            "mlfolio_prediction_drift_score",
            "Drift score of the model's scores (latest monitor run)",
            None if drift.prediction_drift is None else drift.prediction_drift.score,
        ),
        gauge(
            "mlfolio_quality_roc_auc",
            "ROC AUC on labelled current rows (latest monitor run)",
            current_q.get("roc_auc"),
        ),
        gauge(
            "mlfolio_quality_roc_auc_delta",
            "Current minus reference ROC AUC (negative: the model got worse)",
            delta_q.get("roc_auc"),
        ),
        *(
            gauge(
                f"mlfolio_estimated_{key}",
                f"{text} estimated without labels (CBPE, latest monitor run)",
                None if est is None else getattr(est, key),
            )
            for key, text in (
                ("roc_auc", "ROC AUC"),
                ("pr_auc", "PR AUC (average precision)"),
                ("f1", "F1 at the model's threshold"),
                ("precision", "Precision at the model's threshold"),
                ("recall", "Recall at the model's threshold"),
                ("accuracy", "Accuracy at the model's threshold"),
            )
        ),
        gauge(
            "mlfolio_estimated_roc_auc_ci_low",
            "Lower bound of the estimated ROC AUC's interval",
            est_ci[0],
        ),
        gauge(
            "mlfolio_estimated_roc_auc_ci_high",
            "Upper bound of the estimated ROC AUC's interval",
            est_ci[1],
        ),
        gauge(
            "mlfolio_estimated_roc_auc_delta",
            "Estimated (label-free) minus reference ROC AUC (negative: estimated worse)",
            None if est is None else est.roc_auc_delta,
        ),
        gauge(
            "mlfolio_estimate_roc_auc_error",
            "Realised minus estimated ROC AUC on the labelled current rows",
            (side.get("error") or {}).get("roc_auc"),
        ),
        gauge(
            "mlfolio_estimate_concept_shift_suspected",
            "1 when realised metrics fell outside the estimate's interval (P(y|x) changed?)",
            None if not side else int(bool(side.get("concept_shift_suspected"))),
        ),
        gauge(
            "mlfolio_monitor_current_rows",
            "Rows in the latest monitor run's current data",
            (drift.current or {}).get("rows"),
        ),
        gauge(
            "mlfolio_monitor_last_run_timestamp_seconds",
            "When the latest monitor run finished (unix time)",
            datetime.fromisoformat(created).timestamp() if created else None,
        ),
    ]
    return [f for f in families if f is not None]


def ab_gauge_families(doc: dict[str, Any]) -> list[Any]:
    """Gauges for the latest A/B report (an ``ab.json`` document), so a worse challenger
    alerts; none when the window held one variant only (nothing compared).

    Labels: model, champion_version, challenger_version, design (``ab`` or ``shadow``);
    ``mlfolio_ab_labelled_rows`` adds ``variant``. The ROC AUC difference (challenger −
    champion) and its CI appear only when both arms had labels of both classes; the
    sequential test's p-value and difference once it has the rows it needs.
    """
    from prometheus_client.core import GaugeMetricFamily

    comparison = doc.get("comparison") or {}
    champion, challenger = comparison.get("champion"), comparison.get("challenger")
    if not champion or not challenger:
        return []
    labels = {
        "model": str(doc.get("model_name") or ""),
        "champion_version": str(champion.get("version", "")),
        "challenger_version": str(challenger.get("version", "")),
        "design": str(doc.get("design") or comparison.get("design") or ""),
    }
    names, values = list(labels), list(labels.values())

    def gauge(name: str, doc_text: str, value: Any) -> GaugeMetricFamily | None:
        if value is None:
            return None
        family = GaugeMetricFamily(name, doc_text, labels=names)
        family.add_metric(values, float(value))
        return family

    action = (doc.get("recommendation") or {}).get("action")
    seq = comparison.get("sequential") or {}
    rows = GaugeMetricFamily(
        "mlfolio_ab_labelled_rows",
        "Labelled rows per variant in the latest A/B report's window",
        labels=[*names, "variant"],
    )
    for variant, arm in (("champion", champion), ("challenger", challenger)):
        rows.add_metric([*values, variant], float(arm.get("labelled") or 0))
    created = doc.get("created_at")
    families = [
        gauge(
            "mlfolio_ab_roc_auc_difference",
            "Challenger minus champion ROC AUC (latest A/B report; negative: challenger worse)",
            comparison.get("difference"),
        ),
        gauge(
            "mlfolio_ab_roc_auc_difference_ci_low",
            "Lower bound of the ROC AUC difference's confidence interval",
            comparison.get("ci_low"),
        ),
        gauge(
            "mlfolio_ab_roc_auc_difference_ci_high",
            "Upper bound of the ROC AUC difference's confidence interval",
            comparison.get("ci_high"),
        ),
        gauge(
            "mlfolio_ab_sequential_p_value",
            "Always-valid p-value of the sequential test of challenger against champion",
            seq.get("p_value"),
        ),
        gauge(
            "mlfolio_ab_sequential_difference",
            "Challenger minus champion in the sequential test's metric (monitoring.ab.metric)",
            seq.get("difference"),
        ),
        gauge(
            "mlfolio_ab_challenger_worse",
            "1 when the latest A/B report recommends rolling the challenger back",
            int(action == ROLL_BACK),
        ),
        rows,
        gauge(
            "mlfolio_ab_last_run_timestamp_seconds",
            "When the latest A/B report was made (unix time)",
            datetime.fromisoformat(created).timestamp() if created else None,
        ),
    ]
    return [f for f in families if f is not None]


def _write_textfile(families: Callable[[], list[Any]], path: str | Path) -> Path:
    """``families()`` in Prometheus' text format for node_exporter's textfile collector,
    written atomically (prometheus_client writes a temporary file and renames it): a
    scrape never sees half a file."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    class _Collector:
        def collect(self) -> list[Any]:
            return families()

    registry = CollectorRegistry()
    registry.register(_Collector())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


def write_prometheus_textfile(doc: DriftDoc | dict[str, Any], path: str | Path) -> Path:
    """Write the drift gauges for node_exporter's textfile collector, atomically."""
    return _write_textfile(lambda: drift_gauge_families(doc), path)


def publish_for_server(doc: DriftDoc | dict[str, Any], folder: str | Path) -> Path:
    """Write the monitor verdict ``doc`` (the stage's ``drift.json``, a :class:`DriftDoc`)
    into the model server's prediction-log ``folder``, where its ``/metrics`` reads it
    (``mlfolio serve --prediction-log``: the drift gauges of :func:`drift_gauge_families`).
    Written atomically, so the server never reads half a file; returns the path written."""
    path = Path(folder) / SERVER_DRIFT_FILE
    write_json(path, DriftDoc.of(doc).to_json())
    return path


def publish_ab_for_server(report: dict[str, Any], folder: str | Path) -> Path:
    """Write the A/B ``report`` (the stage's ``ab.json``) into the model server's
    prediction-log ``folder``, where its ``/metrics`` shows it (:func:`ab_gauge_families`).
    Atomic like :func:`publish_for_server`; a one-variant report clears the gauges."""
    path = Path(folder) / SERVER_AB_FILE
    write_json(path, report)
    return path


def approval_gauge_families(model: str, pending: dict[str, Any] | None) -> list[Any]:
    """Gauges for approvals (``registry.require_approval``): ``mlfolio_approvals_pending``
    (versions of ``model`` waiting, 0 or 1: one alias), and, while one waits,
    ``mlfolio_approval_oldest_pending_timestamp_seconds`` (when it was asked for: the
    alert takes ``time() -`` it, so a file written once keeps ageing) and
    ``mlfolio_approval_pending_age_seconds`` (its age when written). ``pending`` is
    :func:`mlfolio.approval.pending`'s answer."""
    from prometheus_client.core import GaugeMetricFamily

    count = GaugeMetricFamily(
        "mlfolio_approvals_pending",
        "Model versions that passed the gate and wait for mlfolio approve",
        labels=["model"],
    )
    count.add_metric([model], 0.0 if pending is None else 1.0)
    families = [count]
    if pending is not None and pending.get("requested_at"):
        labels = ["model", "version", "compared_against"]
        values = [model, str(pending["version"]), str(pending.get("compared_against") or "")]
        since = GaugeMetricFamily(
            "mlfolio_approval_oldest_pending_timestamp_seconds",
            "When the oldest pending approval was asked for (unix time)",
            labels=labels,
        )
        since.add_metric(values, datetime.fromisoformat(pending["requested_at"]).timestamp())
        age = GaugeMetricFamily(
            "mlfolio_approval_pending_age_seconds",
            "Age of the oldest pending approval when this was written",
            labels=labels,
        )
        age.add_metric(values, float(pending.get("age_s") or 0.0))
        families += [since, age]
    return families


def write_approvals_textfile(model: str, pending: dict[str, Any] | None, path: str | Path) -> Path:
    """Write :func:`approval_gauge_families` for node_exporter's textfile collector,
    atomically like :func:`write_prometheus_textfile`."""
    return _write_textfile(lambda: approval_gauge_families(model, pending), path)
