"""Prometheus alerting rules for the model server, generated from ``monitoring.alerts``.

:func:`alert_rules` is pure: a :class:`~mlfolio.config.MonitoringConfig` in, the rule
groups of a Prometheus rule file out. Every metric it names is exported by the server
(:mod:`mlfolio.serve.metrics`) or by the drift and A/B gauges of
:mod:`mlfolio.monitor.prometheus`; ``deploy/monitoring/alerts.yml`` is its output for
``parameters/churn.yaml``.
"""

from __future__ import annotations

from typing import Any

import yaml

from mlfolio.config import AlertsConfig, MonitoringConfig, RegistryConfig

# Routes that score rows: health checks and /metrics would dilute latency and error ratios.
SCORING_ROUTES = "/invocations|/v2/models/[^/]+(/versions/[^/]+)?/infer"
DEFAULT_FILE = "deploy/monitoring/alerts.yml"


def _rule(
    name: str,
    expr: str,
    pending: str,
    severity: str,
    summary: str,
    description: str,
    action: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": pending,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "action": action},
    }


def drift_threshold(monitoring: MonitoringConfig) -> float:
    """Drifted share that alerts: ``alerts.drift_share``, else the retraining policy's."""
    a = monitoring.alerts
    return a.drift_share or monitoring.retrain.min_drift_share or monitoring.drift_share


def roc_auc_threshold(monitoring: MonitoringConfig) -> float:
    """ROC AUC drop that alerts: ``alerts.roc_auc_drop``, else the retraining policy's."""
    return monitoring.alerts.roc_auc_drop or monitoring.retrain.max_roc_auc_drop or 0.03


def estimated_roc_auc_threshold(monitoring: MonitoringConfig) -> float:
    """Estimated (label-free) ROC AUC drop that alerts: ``alerts.estimated_roc_auc_drop``,
    else the retraining policy's ``estimated_roc_auc_drop``, else the realised drop's."""
    return (
        monitoring.alerts.estimated_roc_auc_drop
        or monitoring.retrain.estimated_roc_auc_drop
        or roc_auc_threshold(monitoring)
    )


def alert_rules(
    monitoring: MonitoringConfig,
    *,
    job: str | None = None,
    registry: RegistryConfig | None = None,
) -> dict[str, Any]:
    """The rule groups (``{"groups": [...]}``) for the thresholds of ``monitoring.alerts``.

    ``job`` overrides ``alerts.job`` (the Kubernetes target passes its Service name, the
    job a ServiceMonitor's targets get). Drift and quality thresholds left at None take the
    retraining policy's ``min_drift_share`` and ``max_roc_auc_drop``. With
    ``registry`` (the registry section), a third group alerts on an approval pending
    longer than ``registry.approval_sla`` (gauges of ``mlfolio approvals --prometheus``,
    any job: node_exporter's textfile collector exports them).
    """
    a: AlertsConfig = monitoring.alerts
    job = job or a.job
    sel = f'job="{job}"'
    w, p = a.rate_window, a.pending
    drift_share, auc_drop = drift_threshold(monitoring), roc_auc_threshold(monitoring)
    estimated_drop = estimated_roc_auc_threshold(monitoring)
    scoring = f'{sel},route=~"{SCORING_ROUTES}"'

    def ratio(status: str) -> str:
        return (
            f"sum by (job, model) (rate(mlfolio_requests_total{{{scoring},{status}}}[{w}]))\n"
            f"  / sum by (job, model) (rate(mlfolio_requests_total{{{scoring}}}[{w}]))"
        )

    def mean_score(offset: str) -> str:
        win = a.score_window
        part = "sum by (job, model) (rate(mlfolio_prediction_score_{}{{" + sel + "}}[{}]{}))"
        return f"({part.format('sum', win, offset)} / {part.format('count', win, offset)})"

    errors, refused = ratio('status=~"5..",status!="503"'), ratio('status="503"')
    serving = [
        _rule(
            "MlfolioServerDown",
            f"up{{{sel}}} == 0",
            p,
            "critical",
            "Prometheus cannot scrape {{ $labels.instance }}",
            "The model server at {{ $labels.instance }} did not answer /metrics.",
            "Check the pod or process (logs, OOM kills, readiness on /ping); predictions "
            "from it are failing.",
        ),
        _rule(
            "MlfolioServerAbsent",
            f"absent(up{{{sel}}})",
            p,
            "critical",
            f"No target of job {job} is scraped",
            "Prometheus has no model server to scrape: service discovery found none.",
            "Check the Deployment has ready pods and the ServiceMonitor or scrape config "
            "selects them.",
        ),
        _rule(
            "MlfolioHighErrorRatio",
            f"{errors}\n  > {a.error_ratio:g}",
            p,
            "critical",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests fail (5xx)",
            f"More than {a.error_ratio:.0%} of scoring requests answered 5xx over {w}.",
            "Read the server log for the traceback; roll back to the previous version if "
            "it started with a deploy.",
        ),
        _rule(
            "MlfolioHighLatencyP99",
            "histogram_quantile(0.99, sum by (job, model, route, le) "
            f"(rate(mlfolio_request_duration_seconds_bucket{{{scoring}}}[{w}])))\n"
            f"  > {a.latency_p99_seconds:g}",
            p,
            "warning",
            "{{ $labels.model }} {{ $labels.route }}: p99 latency {{ $value | humanizeDuration }}",
            f"The 99th percentile of request time is above {a.latency_p99_seconds:g}s over {w}.",
            "Look at batch sizes and CPU; scale out (HPA max) or lower the batch wait.",
        ),
        _rule(
            "MlfolioOverloaded",
            f"{refused}\n  > {a.overload_ratio:g}",
            p,
            "warning",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests refused (503)",
            f"More than {a.overload_ratio:.0%} of requests were refused by admission "
            "control (too many bodies in flight).",
            "Add replicas or raise the in-flight limits; clients retry after Retry-After.",
        ),
        _rule(
            "MlfolioPredictionLogDropping",
            f"increase(mlfolio_prediction_log_rows_dropped_total{{{sel}}}[{w}]) > 0",
            p,
            "warning",
            "{{ $labels.instance }} drops prediction log rows",
            "The prediction log's queue was full or a write failed: monitoring and the "
            "A/B report will miss rows.",
            "Check the log folder's disk (space, permissions) and the server log.",
        ),
        _rule(
            "MlfolioShadowFailing",
            f"increase(mlfolio_shadow_failures_total{{{sel}}}[{w}]) > 0",
            p,
            "info",
            "{{ $labels.model }}: shadow scorings fail",
            "The challenger scored in shadow failed or was skipped; clients are unaffected, "
            "but the A/B comparison lacks its rows.",
            "Read the server log for the challenger's error before promoting it.",
        ),
    ]
    model = [
        _rule(
            "MlfolioScoreShift",
            f"abs({mean_score('')}\n  - {mean_score(f' offset {a.score_offset}')})\n"
            f"  > {a.score_mean_shift:g}",
            p,
            "warning",
            '{{ $labels.model }}: mean score moved by {{ $value | printf "%.3f" }}',
            f"The mean predicted score over {a.score_window} differs by more than "
            f"{a.score_mean_shift:g} from the same window {a.score_offset} earlier.",
            "Run `mlfolio monitor` on the prediction log to see which columns drifted.",
        ),
        _rule(
            "MlfolioDataDrift",
            f"mlfolio_drift_share{{{sel}}} >= {drift_share:g}",
            p,
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: {{ $value | humanizePercentage }} "
            "of feature columns drifted",
            f"The latest monitor run found at least {drift_share:.0%} of columns drifted "
            "(the retraining policy's threshold).",
            "Open the monitor run's drift report; retrain (`mlfolio run`, or let "
            "`mlfolio monitor`'s policy do it) if the shift is real.",
        ),
        _rule(
            "MlfolioDatasetDrift",
            f"mlfolio_dataset_drift{{{sel}}} == 1",
            p,
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: dataset drift",
            f"The latest monitor run's share of drifted columns reached "
            f"monitoring.drift_share ({monitoring.drift_share:g}).",
            "Open the monitor run's drift report; retrain if the shift is real.",
        ),
        _rule(
            "MlfolioQualityDrop",
            f"mlfolio_quality_roc_auc_delta{{{sel}}} <= -{auc_drop:g}",
            p,
            "critical",
            '{{ $labels.model }} v{{ $labels.version }}: ROC AUC {{ $value | printf "%+.3f" }} '
            "vs reference",
            f"On labelled current rows the ROC AUC fell by at least {auc_drop:g}.",
            "Retrain on recent labelled rows; until then consider the previous version.",
        ),
        _rule(
            "MlfolioEstimatedQualityDrop",
            f"mlfolio_estimated_roc_auc_delta{{{sel}}} <= -{estimated_drop:g}",
            p,
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: estimated ROC AUC "
            '{{ $value | printf "%+.3f" }} vs reference (no labels yet)',
            f"Estimated without labels (CBPE: the scores and the calibration shipped with "
            f"the version) the ROC AUC fell by at least {estimated_drop:g}. It assumes "
            "P(y | x) unchanged: covariate shift it sees, concept shift it cannot.",
            "Open the monitor run's drift report for the shifted columns; label a sample of "
            "recent rows to confirm, then retrain.",
        ),
        _rule(
            "MlfolioConceptShiftSuspected",
            f"mlfolio_estimate_concept_shift_suspected{{{sel}}} == 1",
            p,
            "warning",
            "{{ $labels.model }} v{{ $labels.version }}: realised metrics outside the "
            "label-free estimate's interval",
            "On the labelled current rows the realised ROC AUC or accuracy fell outside the "
            "interval estimated from the scores: P(y | x) may have changed (concept shift), "
            "so the label-free estimate is no longer to be trusted.",
            "Compare realised and estimated metrics in drift.json (performance_estimate."
            "realised); retrain on recently labelled rows.",
        ),
        _rule(
            "MlfolioChallengerWorse",
            f"mlfolio_ab_roc_auc_difference{{{sel}}}\n"
            f"  and mlfolio_ab_challenger_worse{{{sel}}} == 1",
            p,
            "warning",
            "{{ $labels.model }}: challenger v{{ $labels.challenger_version }} is worse than "
            'champion v{{ $labels.champion_version }} (ROC AUC {{ $value | printf "%+.3f" }})',
            "The latest A/B report ({{ $labels.design }}) recommends rolling back: "
            + (
                "the always-valid sequential test finds the challenger's "
                + (
                    "ROC AUC lower"
                    if monitoring.ab.metric == "roc_auc"
                    else f"mean {monitoring.ab.metric} higher"
                )
                + f" at alpha {monitoring.ab.alpha:g}"
                if monitoring.ab.method == "sequential"
                else f"the {monitoring.ab.confidence:.0%} interval of challenger - champion "
                "ROC AUC lies below 0"
            )
            + f", with at least {monitoring.ab.min_labelled} labelled rows per arm "
            "(monitoring.ab).",
            "Take the challenger out of traffic: `mlfolio monitor` with monitoring.ab.act "
            "true removes its alias, then restart the server without --challenger.",
        ),
        _rule(
            "MlfolioMonitorStale",
            f"time() - mlfolio_monitor_last_run_timestamp_seconds{{{sel}}}"
            f" > {a.monitor_stale_hours * 3600:g}",
            p,
            "warning",
            "{{ $labels.model }}: no monitor run for {{ $value | humanizeDuration }}",
            f"The drift gauges are older than {a.monitor_stale_hours:g} hours: the "
            "scheduled `mlfolio monitor` stopped.",
            "Check the scheduler (cron, CI schedule) that runs `mlfolio monitor`.",
        ),
    ]
    groups = [
        {"name": "mlfolio-serving", "rules": serving},
        {"name": "mlfolio-model", "rules": model},
    ]
    if registry is not None:
        groups.append({"name": "mlfolio-registry", "rules": [_approval_rule(registry, p)]})
    return {"groups": groups}


def _approval_rule(registry: RegistryConfig, pending: str) -> dict[str, Any]:
    sla = registry.approval_sla
    return _rule(
        "MlfolioApprovalOverdue",
        f"time() - mlfolio_approval_oldest_pending_timestamp_seconds > {registry.approval_sla_s:g}",
        pending,
        "warning",
        "{{ $labels.model }} v{{ $labels.version }} waits for approval for "
        "{{ $value | humanizeDuration }}",
        f"A version that passed the gate has waited longer than registry.approval_sla "
        f"({sla}) for `mlfolio approve` (registry.require_approval); champion stays "
        "v{{ $labels.compared_against }} meanwhile.",
        "Review its run's index page and model card, then `mlfolio approve MODEL VERSION "
        "--by NAME` or `mlfolio reject MODEL VERSION --by NAME`.",
    )


def rules_yaml(rules: dict[str, Any]) -> str:
    """The rule file's text (``promtool check rules`` reads it)."""
    header = (
        "# Prometheus alerting rules for mlfolio model servers, generated by\n"
        "# mlfolio.monitor.alerts.alert_rules from parameters/churn.yaml (monitoring.alerts).\n"
    )
    return header + yaml.dump(rules, Dumper=_BlockDumper, sort_keys=False, width=4096)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line PromQL as literal blocks (``|``), readable in the rule file and diffs."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)
