"""The generated rules in a real Prometheus scraping real `mlfolio serve` processes: a
drifted verdict fires the drift alert and a rolled-back A/B report the challenger alert,
clean ones do not; every metric the rules and the dashboard read is on the live /metrics."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import yaml

from mlfolio import abtest, config, data, estimate, features, monitor
from mlfolio.monitor import alerts, dashboard

from .conftest import CHURN_PARAMS, require_program
from .servers import (
    MODEL,
    THRESHOLDS,
    register_models,
    split_body,
    start_server,
    stop_server,
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (``mlfolio_*`` and ``up``), by regex."""
    names = set(re.findall(r"\b(mlfolio_[a-z0-9_]+)", expr))
    if re.search(r"\bup\{", expr):
        names.add("up")
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None) -> bytes:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def _verdict_doc(cfg, reference, current, version: str) -> dict:
    """A monitor verdict shaped like the monitoring stage's drift.json."""
    verdict = monitor.drift_verdict(reference, current, cfg.schema, drift_share=0.5)
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": MODEL, "version": version},
        "current": {"kind": "prediction_log", "rows": len(current)},
        **verdict,
        "prediction_drift": {"score": 0.01},
        "quality": {"current": {"roc_auc": 0.81}, "delta": {"roc_auc": -0.04}},
    }


def _estimate(registered, y: pd.Series, rows: slice) -> dict:
    """The champion's label-free estimate on ``rows`` (calibrated on rows 1000-2000, which
    it was not fitted on), with the realised metrics beside it, as the monitor stage
    writes ``drift.json.performance_estimate``."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    model, X, threshold = registered.models["champion"], registered.X, THRESHOLDS["champion"]
    reference = slice(1000, 2000)
    cal = estimate.fit_calibration(
        y.iloc[reference].to_numpy(), model.predict_proba(X.iloc[reference])[:, 1], bootstraps=5
    )
    score = model.predict_proba(X.iloc[rows])[:, 1]
    est = estimate.estimate_performance(score, cal, threshold, draws=200)
    actual = y.iloc[rows].to_numpy()
    realised = {
        "roc_auc": roc_auc_score(actual, score),
        "accuracy": accuracy_score(actual, (score >= threshold).astype(int)),
    }
    est["realised"] = estimate.compare_with_realised(est, realised, len(actual))
    est["roc_auc_delta"] = est["roc_auc"] - 0.84
    return est


def _ab_doc(registered, y: pd.Series, broken: bool) -> dict:
    """A real A/B report (shadow) of the registered champion and challenger on held-out
    Telco rows; ``broken``: the challenger gets three key columns shuffled, as a bad
    feature pipeline would, so the report says roll back."""
    rows = slice(2000, 3500)  # neither model was fitted on these
    X = registered.X.iloc[rows]
    rng = np.random.default_rng(0)
    shuffled = {c: rng.permutation(X[c].to_numpy()) for c in ("contract", "tenure")}
    parts = []
    for variant, version, features_ in (
        ("champion", "1", X),
        ("challenger", "2", X.assign(**shuffled) if broken else X),
    ):
        score = registered.models[variant].predict_proba(features_)[:, 1]
        parts.append(
            pd.DataFrame(
                {
                    "request_id": [f"r{i}" for i in range(len(X))],
                    "model_name": MODEL,
                    "model_version": version,
                    "variant": variant,
                    "shadow": variant == "challenger",
                    "score": score,
                    "label": (score >= 0.5).astype(int),
                    "actual": y.iloc[rows].to_numpy().astype(float),
                }
            )
        )
    return abtest.ab_report(pd.concat(parts, ignore_index=True), bootstrap_samples=100)


@pytest.mark.slow
def test_drift_alert_fires_in_a_real_prometheus_and_every_metric_exists(tmp_path):
    prometheus = require_program("prometheus", "Debian: apt-get install prometheus")
    cfg = config.load(CHURN_PARAMS)
    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    parts = features.split(churn, cfg.schema, cfg.split, cfg.seed)
    registered = register_models(tmp_path)
    drifted_log, clean_log = tmp_path / "log-drifted", tmp_path / "log-clean"
    test = parts["test"]
    # Eight categorical columns stuck at one value and dearer plans: 9 of 19 columns drift.
    stuck = [c for c in cfg.schema.features if c not in cfg.schema.numeric][:8]
    drifted = test.assign(
        monthlycharges=test["monthlycharges"] * 1.5 + 20, **{c: test[c].iloc[0] for c in stuck}
    )
    doc = _verdict_doc(cfg, parts["train"], drifted, "1")
    assert doc["share_drifted"] >= alerts.drift_threshold(cfg.monitoring)
    monitor.publish_for_server(doc, drifted_log)
    clean = _verdict_doc(cfg, parts["train"], parts["test"], "1")
    assert clean["share_drifted"] < alerts.drift_threshold(cfg.monitoring)
    monitor.publish_for_server(clean, clean_log)
    _, y = features.xy(churn.reset_index(drop=True), cfg.schema)
    doc["performance_estimate"] = _estimate(registered, y, slice(2000, 3000))
    monitor.publish_for_server(doc, drifted_log)  # again, with the label-free estimate
    worse, kept = _ab_doc(registered, y, broken=True), _ab_doc(registered, y, broken=False)
    assert worse["recommendation"]["action"] == "roll back"
    assert kept["recommendation"]["action"] == "keep"
    monitor.publish_ab_for_server(worse, drifted_log)
    monitor.publish_ab_for_server(kept, clean_log)

    servers, prom = [], None
    try:
        for folder in (drifted_log, clean_log):
            servers.append(start_server(registered, "--prediction-log", str(folder)))
        for server in servers:
            _get(f"{server.url}/invocations", split_body(registered.X.head(20)))
        exposed = _get(f"{servers[0].url}/metrics").decode()

        # Every metric a rule or a panel reads is exported by the live server.
        names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exposed, re.M)) | {"up"}
        ab_gauges = {f.name for f in monitor.ab_gauge_families(worse)}
        # ab.json reached /metrics, the sequential test's two gauges with it
        assert {"mlfolio_ab_sequential_p_value", "mlfolio_ab_sequential_difference"} <= ab_gauges
        assert len(ab_gauges) == 8 and ab_gauges <= names
        mon = cfg.monitoring
        read = set()
        for group in alerts.alert_rules(mon)["groups"]:
            for rule in group["rules"]:
                read |= metric_names(rule["expr"])
        for expr in dashboard.expressions(dashboard.grafana_dashboard()):
            read |= metric_names(expr)
        assert read - names == set(), f"not on /metrics: {sorted(read - names)}"

        fast = mon.model_copy(
            update={"alerts": mon.alerts.model_copy(update={"pending": "2s", "rate_window": "10s"})}
        )
        (tmp_path / "rules.yml").write_text(alerts.rules_yaml(alerts.alert_rules(fast)))
        port = _free_port()
        targets = [s.url.removeprefix("http://") for s in servers]
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yml")],
                    "scrape_configs": [
                        {"job_name": "mlfolio", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        started = time.monotonic()
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("w"),
        )
        timeline: dict[str, float] = {}
        ab_timeline: dict[str, float] = {}
        seen_for_clean = []
        deadline = started + 60
        while "firing" not in timeline or "firing" not in ab_timeline:
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
            try:
                doc_alerts = json.loads(_get(f"http://127.0.0.1:{port}/api/v1/alerts"))
            except OSError:
                continue
            timeline.setdefault("ready", time.monotonic() - started)
            for alert in doc_alerts["data"]["alerts"]:
                states = {"MlfolioDataDrift": timeline, "MlfolioChallengerWorse": ab_timeline}
                if alert["labels"]["alertname"] not in states:
                    continue
                if alert["labels"]["instance"] == targets[0]:
                    states[alert["labels"]["alertname"]].setdefault(
                        alert["state"], time.monotonic() - started
                    )
                else:
                    seen_for_clean.append(alert)
        print(
            "\nPrometheus timeline (s from start): "
            + ", ".join(f"{k} {v:.1f}" for k, v in timeline.items())
            + "; challenger alert: "
            + ", ".join(f"{k} {v:.1f}" for k, v in ab_timeline.items())
        )
        for states in (timeline, ab_timeline):
            assert "pending" in states and "firing" in states, (
                timeline,
                ab_timeline,
                (tmp_path / "prometheus.log").read_text()[-2000:],
            )
        assert seen_for_clean == []
        # The other alerts that read drift.json fired for the drifted server only.
        firing = {
            (a["labels"]["alertname"], a["labels"].get("instance"))
            for a in json.loads(_get(f"http://127.0.0.1:{port}/api/v1/alerts"))["data"]["alerts"]
        }
        assert ("MlfolioDataDrift", targets[1]) not in firing
        assert ("MlfolioServerDown", targets[0]) not in firing
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
        for server in servers:
            stop_server(server.proc)
