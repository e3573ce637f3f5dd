"""The kubernetes target's monitoring files: ServiceMonitor, PrometheusRule and the dashboard
ConfigMap, validated with the manifests; broken ones fail naming the field."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from mlfolio import config
from mlfolio.deploy import kubernetes as k8s
from mlfolio.deploy.kubernetes import monitoring as kmon
from mlfolio.monitor import alerts

from .conftest import CHURN_PARAMS, require_module, require_program
from .test_deploy_kubernetes import BASE, by_kind, load_docs


@pytest.fixture
def rendered(tmp_path):
    require_module("kubernetes_validate", "the manifests are checked against the schemas")
    mon = config.load(CHURN_PARAMS).monitoring
    out = tmp_path / "deploy"
    return k8s.render(out, monitoring=mon, token_secret="serve-token", **BASE), out, mon


def test_render_writes_the_monitoring_files_beside_the_manifests(rendered):
    summary, out, mon = rendered
    for name in (kmon.SERVICE_MONITOR_FILE, kmon.PROMETHEUS_RULE_FILE, kmon.DASHBOARD_FILE):
        assert name in summary["files"] and (out / name).is_file()
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= set(summary["resources"])
    assert "ServiceMonitor/churn-classifier" in summary["validated"]
    refs = k8s.validate_manifests(out)
    assert "ConfigMap/churn-classifier-dashboard" in refs

    monitor = load_docs(out / kmon.SERVICE_MONITOR_FILE)[0]
    service = by_kind(load_docs(out / "kubernetes.yaml"))["Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"][k] == v for k, v in selector.items())
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "serve-token", "key": "token"}

    # The rules' job is the Service name: the job label a ServiceMonitor's targets get.
    rule = load_docs(out / kmon.PROMETHEUS_RULE_FILE)[0]
    assert rule["spec"]["groups"] == alerts.alert_rules(mon, job="churn-classifier")["groups"]
    board_map = load_docs(out / kmon.DASHBOARD_FILE)[0]
    assert board_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(board_map["data"][kmon.DASHBOARD_KEY])
    job = next(v for v in board["templating"]["list"] if v["name"] == "job")
    assert job["current"]["value"] == "churn-classifier"


def test_without_monitoring_no_monitoring_files(tmp_path):
    require_module("kubernetes_validate", "the manifests are checked against the schemas")
    summary = k8s.render(tmp_path, **BASE)
    assert kmon.SERVICE_MONITOR_FILE not in summary["files"]


def test_the_prometheus_rule_spec_passes_promtool(rendered, tmp_path):
    promtool = require_program("promtool", "Debian: apt-get install prometheus")
    _, out, _ = rendered
    spec = load_docs(out / kmon.PROMETHEUS_RULE_FILE)[0]["spec"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(spec))
    check = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("file", "mutate", "expected"),
    [
        (
            kmon.SERVICE_MONITOR_FILE,
            lambda d: d["spec"]["endpoints"][0].update(port="web"),
            "spec.endpoints[0].port: no port of the selected Service is named 'web'",
        ),
        (
            kmon.SERVICE_MONITOR_FILE,
            lambda d: d["spec"]["selector"].update(matchLabels={"app": "other"}),
            "spec.selector.matchLabels: {'app': 'other'} selects no Service's labels",
        ),
        (
            kmon.PROMETHEUS_RULE_FILE,
            lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr"),
            "spec.groups[0].rules[0].expr: required field is missing",
        ),
        (
            kmon.PROMETHEUS_RULE_FILE,
            lambda d: d.update(apiVersion="monitoring.coreos.com/v2"),
            "apiVersion: expected 'monitoring.coreos.com/v1'",
        ),
        (
            kmon.DASHBOARD_FILE,
            lambda d: d["metadata"]["labels"].update(grafana_dashboard=1),
            "metadata.labels.grafana_dashboard: 1 is not a valid label value",
        ),
    ],
    ids=["port", "selector", "expr", "api-version", "label"],
)
def test_broken_monitoring_document_fails_naming_the_field(rendered, file, mutate, expected):
    _, out, _ = rendered
    doc = load_docs(out / file)[0]
    mutate(doc)
    docs = [*load_docs(out / "kubernetes.yaml"), doc]
    with pytest.raises(k8s.ManifestError) as info:
        k8s.validate_documents(docs)
    assert expected in str(info.value), str(info.value)
