"""Monitoring beside the manifests: a ServiceMonitor and a PrometheusRule (Prometheus
Operator CRDs) and the Grafana dashboard as a ConfigMap, plus their offline checks.

No schema ships for the operator's CRDs, so :func:`check_monitoring_resource` checks by
hand the fields the operator needs; the cross-check makes sure the ServiceMonitor selects
the Service of the same file by a port it has.
"""

from __future__ import annotations

from typing import Any

from mlfolio.deploy.kubernetes.names import METRICS_PATH, PORT_NAME, TOKEN_SECRET_KEY
from mlfolio.deploy.kubernetes.settings import KubernetesSettings

PROMETHEUS_RULE_FILE = "prometheusrule.yaml"
SERVICE_MONITOR_FILE = "servicemonitor.yaml"
DASHBOARD_FILE = "grafana-dashboard.yaml"
OPERATOR_API = "monitoring.coreos.com/v1"
DASHBOARD_KEY = "mlfolio-model-server.json"


def _meta(s: KubernetesSettings, **labels: str) -> dict[str, Any]:
    return {"name": s.resource_name, "namespace": s.namespace, "labels": {**s.labels, **labels}}


def service_monitor(s: KubernetesSettings, *, interval: str = "30s") -> dict[str, Any]:
    """Scrape the Service's ``http`` port; the job label is the Service name."""
    endpoint: dict[str, Any] = {"port": PORT_NAME, "path": METRICS_PATH, "interval": interval}
    if s.token_secret is not None:
        endpoint["authorization"] = {
            "type": "Bearer",
            "credentials": {"name": s.token_secret, "key": TOKEN_SECRET_KEY},
        }
    return {
        "apiVersion": OPERATOR_API,
        "kind": "ServiceMonitor",
        "metadata": _meta(s),
        "spec": {
            "selector": {"matchLabels": s.selector},
            "namespaceSelector": {"matchNames": [s.namespace]},
            "endpoints": [endpoint],
        },
    }


def prometheus_rule(s: KubernetesSettings, rules: dict[str, Any]) -> dict[str, Any]:
    """The rule groups of :func:`mlfolio.monitor.alerts.alert_rules` as a PrometheusRule."""
    return {
        "apiVersion": OPERATOR_API,
        "kind": "PrometheusRule",
        "metadata": _meta(s),
        "spec": {"groups": rules["groups"]},
    }


def dashboard_config_map(s: KubernetesSettings, dashboard_json: str) -> dict[str, Any]:
    """The dashboard for Grafana's sidecar, which loads ConfigMaps labelled
    ``grafana_dashboard: "1"``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            **_meta(s, grafana_dashboard="1"),
            "name": f"{s.resource_name}-dashboard"[:253],
        },
        "data": {DASHBOARD_KEY: dashboard_json},
    }


def check_monitoring_resource(doc: dict[str, Any], where: str) -> list[str]:
    """What the Prometheus Operator needs in a ServiceMonitor or PrometheusRule."""
    problems: list[str] = []
    if doc.get("apiVersion") != OPERATOR_API:
        problems.append(f"{where}: apiVersion: expected {OPERATOR_API!r}")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, f"{where}: spec: required field is missing"]
    if doc["kind"] == "ServiceMonitor":
        selector = (spec.get("selector") or {}).get("matchLabels")
        if not isinstance(selector, dict) or not selector:
            problems.append(f"{where}: spec.selector.matchLabels: required, a non-empty mapping")
        endpoints = spec.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            problems.append(f"{where}: spec.endpoints: required, a non-empty list")
        for i, ep in enumerate(endpoints or []):
            if not isinstance(ep, dict) or not isinstance(ep.get("port"), str):
                problems.append(f"{where}: spec.endpoints[{i}].port: expected a port name")
    else:
        groups = spec.get("groups")
        if not isinstance(groups, list) or not groups:
            problems.append(f"{where}: spec.groups: required, a non-empty list")
        for i, group in enumerate(groups or []):
            for j, rule in enumerate(group.get("rules") or []):
                field = f"spec.groups[{i}].rules[{j}]"
                if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                    problems.append(f"{where}: {field}.expr: required field is missing")
                if ("alert" in rule) == ("record" in rule):
                    problems.append(f"{where}: {field}: needs exactly one of alert or record")
    return problems


def check_service_monitors(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Each ServiceMonitor selects a Service of the same documents by a port it names."""
    services = [d for _, d in docs if d.get("kind") == "Service"]
    if not services:
        return []
    problems = []
    for where, doc in docs:
        if doc.get("kind") != "ServiceMonitor":
            continue
        selector = doc["spec"]["selector"]["matchLabels"]
        ns = doc.get("metadata", {}).get("namespace")
        matched = [
            svc
            for svc in services
            if svc.get("metadata", {}).get("namespace") == ns
            and all(svc["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]
        if not matched:
            problems.append(
                f"{where}: spec.selector.matchLabels: {selector!r} selects no Service's labels"
            )
        ports = {p.get("name") for svc in matched for p in svc["spec"].get("ports") or []}
        for i, ep in enumerate(doc["spec"]["endpoints"]):
            if matched and ep["port"] not in ports:
                problems.append(
                    f"{where}: spec.endpoints[{i}].port: no port of the selected Service is "
                    f"named {ep['port']!r}"
                )
    return problems
