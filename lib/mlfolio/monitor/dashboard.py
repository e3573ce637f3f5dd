"""A Grafana dashboard of the model server's metrics, as importable JSON.

:func:`grafana_dashboard` is pure; ``deploy/monitoring/grafana-dashboard.json`` is its
output and the kubernetes target ships it as a ConfigMap (Grafana's sidecar loads
ConfigMaps labelled ``grafana_dashboard: "1"``). Panels read only metrics the server
exports; a test checks each name against a live ``/metrics``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mlfolio.monitor.alerts import SCORING_ROUTES

if TYPE_CHECKING:
    from mlfolio.config import MonitoringConfig

DEFAULT_FILE = "deploy/monitoring/grafana-dashboard.json"
UID = "mlfolio-model-server"
_DS = {"type": "prometheus", "uid": "${datasource}"}
_SEL = 'job=~"$job",model=~"$model"'


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": _DS, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(
    pid: int,
    title: str,
    targets: list[tuple[str, str]],
    pos: tuple[int, int, int, int],
    *,
    kind: str = "timeseries",
    unit: str = "short",
    description: str = "",
    thresholds: list[tuple[str, float | None]] | None = None,
) -> dict[str, Any]:
    x, y, w, h = pos
    steps = [{"color": c, "value": v} for c, v in (thresholds or [("green", None)])]
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": _DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {},
        "targets": [_target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(targets)],
    }


def _variable(name: str, query: str, *, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": "All", "value": "$__all"},
    }


def for_monitoring(monitoring: MonitoringConfig, *, job: str | None = None) -> dict[str, Any]:
    """The dashboard that matches the alert rules of ``monitoring``
    (:func:`mlfolio.monitor.alerts.alert_rules`): the same job, drift threshold and mean
    score windows; ``job`` overrides ``alerts.job`` as it does there."""
    from mlfolio.monitor.alerts import drift_threshold

    a = monitoring.alerts
    return grafana_dashboard(
        job=job or a.job,
        drift_share=drift_threshold(monitoring),
        score_window=a.score_window,
        score_offset=a.score_offset,
    )


def grafana_dashboard(
    *,
    job: str = "mlfolio",
    drift_share: float = 0.3,
    score_window: str = "1h",
    score_offset: str = "1d",
) -> dict[str, Any]:
    """The dashboard: traffic, errors, latency quantiles, batch sizes, scores, variants,
    drift, quality and the A/B comparison. ``job`` is the default of its ``$job``
    variable, ``drift_share`` the red line of the drift gauge (the alert's threshold);
    the mean score now (over ``score_window``) is drawn beside ``score_offset`` earlier,
    as the score-shift alert compares them."""
    s, scoring = _SEL, f'{_SEL},route=~"{SCORING_ROUTES}"'
    rate = "[$__rate_interval]"
    now, then = f"[{score_window}]", f"[{score_window}] offset {score_offset}"
    quantiles = [
        (
            f"histogram_quantile({q}, sum by (le) "
            f"(rate(mlfolio_request_duration_seconds_bucket{{{scoring}}}{rate})))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.9, 0.99)
    ]
    panels = [
        _panel(
            1,
            "Requests per second by route and status",
            [
                (
                    f"sum by (route, status) (rate(mlfolio_requests_total{{{s}}}{rate}))",
                    "{{route}} {{status}}",
                )
            ],
            (0, 0, 12, 8),
            unit="reqps",
        ),
        _panel(
            2,
            "Error and overload ratio",
            [
                (
                    f'sum(rate(mlfolio_requests_total{{{scoring},status=~"5..",status!="503"}}'
                    f"{rate})) / sum(rate(mlfolio_requests_total{{{scoring}}}{rate}))",
                    "5xx (not 503)",
                ),
                (
                    f'sum(rate(mlfolio_requests_total{{{scoring},status="503"}}{rate}))'
                    f" / sum(rate(mlfolio_requests_total{{{scoring}}}{rate}))",
                    "503 refused",
                ),
            ],
            (12, 0, 12, 8),
            unit="percentunit",
        ),
        _panel(3, "Latency quantiles (scoring routes)", quantiles, (0, 8, 12, 8), unit="s"),
        _panel(
            4,
            "Rows scored per second by predicted label",
            [(f"sum by (label) (rate(mlfolio_predictions_total{{{s}}}{rate}))", "label {{label}}")],
            (12, 8, 12, 8),
        ),
        _panel(
            5,
            "Batch sizes (rows and requests per predict_proba call)",
            [
                (
                    f"sum(rate(mlfolio_batch_rows_sum{{{s}}}{rate})) / "
                    f"sum(rate(mlfolio_batch_rows_count{{{s}}}{rate}))",
                    "mean rows",
                ),
                (
                    "histogram_quantile(0.9, sum by (le) "
                    f"(rate(mlfolio_batch_rows_bucket{{{s}}}{rate})))",
                    "p90 rows",
                ),
                (
                    f"sum(rate(mlfolio_batch_requests_sum{{{s}}}{rate})) / "
                    f"sum(rate(mlfolio_batch_requests_count{{{s}}}{rate}))",
                    "mean requests",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(mlfolio_batch_duration_seconds_bucket{{{s}}}{rate})))",
                    "p99 batch seconds",
                ),
            ],
            (0, 16, 12, 8),
        ),
        _panel(
            6,
            "Score distribution (share of rows per score bucket)",
            [
                (
                    f"sum by (le) (increase(mlfolio_prediction_score_bucket{{{s}}}[$__range]))",
                    "{{le}}",
                )
            ],
            (12, 16, 12, 8),
            kind="bargauge",
            description="Cumulative counts per upper bound over the dashboard's range.",
        ),
        _panel(
            7,
            f"Mean score, now and {score_offset} earlier",
            [
                (
                    f"sum(rate(mlfolio_prediction_score_sum{{{s}}}{now})) / "
                    f"sum(rate(mlfolio_prediction_score_count{{{s}}}{now}))",
                    f"now ({score_window})",
                ),
                (
                    f"sum(rate(mlfolio_prediction_score_sum{{{s}}}{then})) / "
                    f"sum(rate(mlfolio_prediction_score_count{{{s}}}{then}))",
                    f"{score_offset} earlier",
                ),
            ],
            (0, 24, 12, 8),
            unit="percentunit",
        ),
        _panel(
            8,
            "Rows per variant (shadow=1: scored alongside the champion)",
            [
                (
                    f"sum by (variant, shadow) (rate(mlfolio_variant_rows_total{{{s}}}{rate}))",
                    "{{variant}} shadow={{shadow}}",
                ),
                (
                    f"sum(rate(mlfolio_shadow_failures_total{{{s}}}{rate}))",
                    "shadow failures",
                ),
            ],
            (12, 24, 12, 8),
        ),
        _panel(
            9,
            "Drifted share of feature columns",
            [(f"max by (model, version) (mlfolio_drift_share{{{s}}})", "v{{version}}")],
            (0, 32, 6, 6),
            kind="gauge",
            unit="percentunit",
            thresholds=[("green", None), ("red", drift_share)],
        ),
        _panel(
            10,
            "Dataset drift (latest monitor run)",
            [(f"max(mlfolio_dataset_drift{{{s}}})", "dataset drift")],
            (6, 32, 6, 6),
            kind="stat",
            thresholds=[("green", None), ("red", 1)],
        ),
        _panel(
            11,
            "ROC AUC on labelled rows, and change vs reference",
            [
                (f"max by (version) (mlfolio_quality_roc_auc{{{s}}})", "ROC AUC v{{version}}"),
                (
                    f"max by (version) (mlfolio_quality_roc_auc_delta{{{s}}})",
                    "delta v{{version}}",
                ),
            ],
            (12, 32, 6, 6),
            kind="stat",
        ),
        _panel(
            12,
            "Latest monitor run",
            [
                (
                    f"time() - max(mlfolio_monitor_last_run_timestamp_seconds{{{s}}})",
                    "age",
                ),
                (f"max(mlfolio_monitor_current_rows{{{s}}})", "current rows"),
                (f"max(mlfolio_prediction_drift_score{{{s}}})", "score drift"),
                (f"sum(mlfolio_prediction_log_rows_queued{{{s}}})", "log rows queued"),
                (
                    f"sum(increase(mlfolio_prediction_log_rows_dropped_total{{{s}}}[1h]))",
                    "log rows dropped (1h)",
                ),
            ],
            (18, 32, 6, 6),
            kind="stat",
        ),
        _panel(
            13,
            "Model being served",
            [(f"max by (version, alias, scorer) (mlfolio_model_info{{{s}}})", "{{version}}")],
            (0, 38, 12, 4),
            kind="stat",
        ),
        _panel(
            14,
            "A/B: challenger minus champion ROC AUC, with its interval",
            [
                (
                    f"max by (champion_version, challenger_version) "
                    f"(mlfolio_ab_roc_auc_difference{suffix}{{{s}}})",
                    f"{legend} v{{{{challenger_version}}}} - v{{{{champion_version}}}}",
                )
                for suffix, legend in (
                    ("", "difference"),
                    ("_ci_low", "CI low"),
                    ("_ci_high", "CI high"),
                )
            ],
            (12, 38, 12, 8),
            description="From the latest A/B report (ab.json beside the prediction log); "
            "below 0: the challenger is worse.",
            thresholds=[("red", None), ("green", 0)],
        ),
        _panel(
            15,
            "A/B verdict and labelled rows per variant",
            [
                (f"max(mlfolio_ab_challenger_worse{{{s}}})", "challenger worse (roll back)"),
                (
                    f"sum by (variant) (mlfolio_ab_labelled_rows{{{s}}})",
                    "labelled rows {{variant}}",
                ),
            ],
            (0, 42, 12, 4),
            kind="stat",
            description="1: the latest A/B report recommends rolling the challenger back "
            "(the MlfolioChallengerWorse alert).",
        ),
        _panel(
            16,
            "ROC AUC estimated without labels (CBPE), its interval, and realised",
            [
                *(
                    (f"max by (version) (mlfolio_estimated_roc_auc{suffix}{{{s}}})", legend)
                    for suffix, legend in (
                        ("", "estimated v{{version}}"),
                        ("_ci_low", "interval low v{{version}}"),
                        ("_ci_high", "interval high v{{version}}"),
                    )
                ),
                (f"max by (version) (mlfolio_quality_roc_auc{{{s}}})", "realised v{{version}}"),
            ],
            (12, 46, 12, 8),
            description="From the latest monitor run: the champion's ROC AUC estimated from "
            "its calibrated scores before labels arrive; realised once they do. Realised "
            "outside the interval: concept shift? (MlfolioConceptShiftSuspected).",
        ),
    ]
    return {
        "uid": UID,
        "title": "mlfolio model server",
        "tags": ["mlfolio", "mlops"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                {
                    **_variable("job", "label_values(mlfolio_model_info, job)", label="Job"),
                    "current": {"selected": True, "text": job, "value": job},
                },
                _variable(
                    "model", 'label_values(mlfolio_model_info{job=~"$job"}, model)', label="Model"
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard_json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2) + "\n"


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if isinstance(var.get("query"), dict):
            exprs.append(var["query"]["query"])
    return exprs
