"""The generated alert rules and dashboard: committed files up to date, promtool's checks
and unit tests, thresholds from parameters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mlfolio import config
from mlfolio.errors import ConfigError
from mlfolio.monitor import alerts, dashboard

from .conftest import CHURN_PARAMS, require_program

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy/monitoring"


@pytest.fixture(scope="module")
def mon():
    return config.load(CHURN_PARAMS).monitoring


@pytest.fixture(scope="module")
def registry_cfg():
    return config.load(CHURN_PARAMS).registry


def test_committed_files_are_the_generators_output_for_churn_yaml(mon, registry_cfg):
    rules = alerts.rules_yaml(alerts.alert_rules(mon, registry=registry_cfg))
    assert (ROOT / alerts.DEFAULT_FILE).read_text() == rules, (
        "run .venv/bin/python tools/monitoring_files.py"
    )
    board = dashboard.grafana_dashboard(job=mon.alerts.job, drift_share=alerts.drift_threshold(mon))
    assert (ROOT / dashboard.DEFAULT_FILE).read_text() == dashboard.dashboard_json(board)


def test_every_issue_alert_is_there_with_a_severity_and_an_action(mon):
    rules = [r for g in alerts.alert_rules(mon)["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "MlfolioServerDown",
        "MlfolioServerAbsent",
        "MlfolioHighErrorRatio",
        "MlfolioHighLatencyP99",
        "MlfolioOverloaded",
        "MlfolioPredictionLogDropping",
        "MlfolioScoreShift",
        "MlfolioDataDrift",
        "MlfolioDatasetDrift",
        "MlfolioQualityDrop",
        "MlfolioChallengerWorse",
        "MlfolioEstimatedQualityDrop",
        "MlfolioConceptShiftSuspected",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["action"] and rule["for"] == "5m"


def test_thresholds_come_from_parameters_and_default_to_the_retraining_policy(mon):
    by_name = {r["alert"]: r["expr"] for g in alerts.alert_rules(mon)["groups"] for r in g["rules"]}
    assert by_name["MlfolioDataDrift"].endswith(f">= {mon.retrain.min_drift_share:g}")
    assert by_name["MlfolioQualityDrop"].endswith(f"<= -{mon.retrain.max_roc_auc_drop:g}")
    custom = mon.model_copy(
        update={
            "alerts": config.AlertsConfig(
                drift_share=0.6, latency_p99_seconds=0.2, pending="1s", job="churn"
            )
        }
    )
    rules = [r for g in alerts.alert_rules(custom)["groups"] for r in g["rules"]]
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert exprs["MlfolioDataDrift"] == 'mlfolio_drift_share{job="churn"} >= 0.6'
    assert exprs["MlfolioHighLatencyP99"].endswith("> 0.2")
    assert {r["for"] for r in rules} == {"1s"}
    assert alerts.alert_rules(custom, job="other")["groups"][0]["rules"][0]["expr"] == (
        'up{job="other"} == 0'
    )


def test_an_unknown_or_invalid_alert_setting_is_refused(tmp_path):
    text = Path(CHURN_PARAMS).read_text()
    for bad, word in (("{latency_p99: 1}", "latency_p99"), ("{pending: soon}", "pending")):
        path = tmp_path / "p.yaml"
        path.write_text(
            text.replace("monitoring:", f"monitoring:\n  alerts: {bad}", 1).replace(
                "data/", f"{ROOT}/data/"
            )
        )
        with pytest.raises(ConfigError, match=word):
            config.load(path)


def test_dashboard_is_importable_json_with_the_panels_the_issue_names():
    board = json.loads((ROOT / dashboard.DEFAULT_FILE).read_text())
    assert board["uid"] and board["schemaVersion"] >= 36 and not board.get("id")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in board["panels"])
    words = ("requests", "error", "latency", "batch", "score", "variant", "drift", "roc auc", "a/b")
    for word in words:
        assert word in titles
    for panel in board["panels"]:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    promtool = require_program("promtool", "Debian: apt-get install prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", str(MONITORING / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    rules = sum(len(g["rules"]) for g in groups)
    assert rules >= 16 and f"SUCCESS: {rules} rules found" in check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", str(MONITORING / "alerts_test.yml")],
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_has_a_firing_case_in_the_unit_tests(mon, registry_cfg):
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    silent_on_good = all(
        "good" not in str(a["exp_labels"])
        for t in tests
        for case in t.get("alert_rule_test", [])
        for a in case.get("exp_alerts") or []
    )
    groups = alerts.alert_rules(mon, registry=registry_cfg)["groups"]
    names = {r["alert"] for g in groups for r in g["rules"]}
    assert fired == names and silent_on_good


# The route templates of the protocols `mlfolio serve` speaks (MLflow scoring, SageMaker,
# KServe V2, its own ops routes): the `route` label of its request metrics.
PROTOCOL_ROUTES = {
    "/ping",
    "/health",
    "/version",
    "/invocations",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}


def test_error_and_latency_rules_read_only_the_scoring_routes():
    import re

    scoring = {r for r in PROTOCOL_ROUTES if re.fullmatch(alerts.SCORING_ROUTES, r)}
    assert scoring == {
        "/invocations",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    }


def test_dashboards_score_panel_compares_what_the_score_alert_compares(mon):
    alerting = mon.alerts.model_copy(update={"score_window": "30m", "score_offset": "7d"})
    custom = mon.model_copy(update={"alerts": alerting})
    rule = next(
        r
        for group in alerts.alert_rules(custom)["groups"]
        for r in group["rules"]
        if r["alert"] == "MlfolioScoreShift"
    )
    assert "[30m]" in rule["expr"] and "offset 7d" in rule["expr"]
    board = dashboard.for_monitoring(custom)
    panel = next(p for p in board["panels"] if p["title"].startswith("Mean score"))
    now, earlier = (t["expr"] for t in panel["targets"])
    assert "[30m]" in now and "offset" not in now
    assert "[30m] offset 7d" in earlier
    # the committed dashboard is this function's output for churn.yaml
    assert dashboard.dashboard_json(dashboard.for_monitoring(mon)) == (
        (ROOT / dashboard.DEFAULT_FILE).read_text()
    )
