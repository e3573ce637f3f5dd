"""Drift verdicts on the real Telco data: ours, and whether Evidently 0.7 agrees."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest

from mlfolio import data, features, monitor
from mlfolio.errors import DataValidationError
from mlfolio.pipeline import terminal


@pytest.fixture(scope="module")
def parts(cfg):
    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    # The seeded split: these tests take heads of its parts as i.i.d. samples whose
    # p-value verdicts are known (any other sample has its own 5 % false alarms per column)
    seeded = cfg.split.model_copy(update={"method": "seeded"})
    return features.split(churn, cfg.schema, seeded, cfg.seed)


def shifted(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["monthlycharges"] = out["monthlycharges"] * 1.5 + 20
    return out


def month_to_month(df: pd.DataFrame, share: float = 0.8, seed: int = 0) -> pd.DataFrame:
    out = df.copy()
    pick = np.random.default_rng(seed).random(len(out)) < share
    out.loc[pick, "contract"] = "Month-to-month"
    return out


def test_iid_split_is_not_flagged(cfg, parts):
    verdict = monitor.drift_verdict(parts["train"], parts["test"], cfg.schema)
    assert verdict["drifted_columns"] == []
    assert verdict["dataset_drift"] is False
    assert verdict["n_columns"] == len(cfg.schema.features)
    # 2400 reference rows: Evidently's large-data tests
    assert verdict["columns"]["tenure"]["method"] == "wasserstein"
    assert verdict["columns"]["contract"]["method"] == "jensenshannon"
    assert {r["threshold"] for r in verdict["columns"].values()} == {0.1}


def test_shifted_numeric_column_is_flagged(cfg, parts):
    verdict = monitor.drift_verdict(parts["train"], shifted(parts["test"]), cfg.schema)
    assert verdict["drifted_columns"] == ["monthlycharges"]
    assert verdict["columns"]["monthlycharges"]["score"] > 0.5


def test_changed_category_mix_is_flagged(cfg, parts):
    verdict = monitor.drift_verdict(parts["train"], month_to_month(parts["test"]), cfg.schema)
    assert verdict["drifted_columns"] == ["contract"]
    assert verdict["dataset_drift"] is False  # 1 of 19 columns


def test_small_data_uses_p_value_tests(cfg, parts):
    ref, cur = parts["train"].iloc[:800], shifted(parts["test"]).iloc[:500]
    verdict = monitor.drift_verdict(ref, cur, cfg.schema)
    methods = {c: r["method"] for c, r in verdict["columns"].items()}
    assert methods["tenure"] == "ks"
    assert methods["gender"] == "z" and methods["contract"] == "chisquare"
    assert verdict["drifted_columns"] == ["monthlycharges"]


def test_thresholds_and_drift_share_settings(cfg, parts):
    cur = month_to_month(shifted(parts["test"]))
    verdict = monitor.drift_verdict(parts["train"], cur, cfg.schema, drift_share=0.1)
    assert verdict["n_drifted"] == 2 and verdict["dataset_drift"] is True
    loose = monitor.drift_verdict(
        parts["train"], cur, cfg.schema, per_column_threshold={"monthlycharges": 10.0}
    )
    assert loose["drifted_columns"] == ["contract"]


def test_wasserstein_matches_scipy_for_unequal_sizes():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=3001), np.round(rng.normal(0.2, 1.3, size=1999), 1)
    expected = wasserstein_distance(ref, cur) / np.std(ref)
    assert monitor.drift._wasserstein_normed(ref, cur) == pytest.approx(expected, rel=1e-12)
    assert monitor.drift._wasserstein_normed(ref, ref[::-1]) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    "case",
    ["large: 2400 vs 800 rows", "small: 800 vs 500 rows"],
)
def test_verdicts_agree_with_evidently(cfg, parts, case):
    if case.startswith("large"):
        ref, cur = parts["train"], month_to_month(shifted(parts["test"]))
    else:
        ref, cur = parts["train"].iloc[:800], month_to_month(shifted(parts["test"])).iloc[:500]
    ours = monitor.drift_verdict(ref, cur, cfg.schema, drift_share=0.1)
    theirs = monitor.evidently_verdict(ref, cur, cfg.schema, drift_share=0.1)
    assert ours["drifted_columns"] == theirs["drifted_columns"] == ["monthlycharges", "contract"]
    assert ours["share_drifted"] == pytest.approx(theirs["share_drifted"])
    assert ours["dataset_drift"] is theirs["dataset_drift"] is True
    for col in cfg.schema.features:
        mine, evid = ours["columns"][col], theirs["columns"][col]
        assert mine["drifted"] == evid["drifted"], col
        assert mine["score"] == pytest.approx(evid["score"], rel=1e-9, abs=1e-12), col
        assert mine["method_name"] == evid["method"], col


def test_evidently_report_writes_html(cfg, parts, tmp_path):
    out = monitor.evidently_report(
        parts["train"], parts["test"], cfg.schema, tmp_path / "drift.html", sample_rows=1500
    )
    html = (tmp_path / "drift.html").read_text()
    assert len(html) > 10_000 and "<html" in html.lower()
    assert out["reference_rows"] == 1500 and out["current_rows"] == 800
    assert out["drifted_columns"] == []


def test_missing_column_is_named(cfg, parts):
    with pytest.raises(DataValidationError, match=r"current: missing column\(s\) \['contract'\]"):
        monitor.drift_verdict(parts["train"], parts["test"].drop(columns="contract"), cfg.schema)


def test_text_in_numeric_column_is_named(cfg, parts):
    cur = parts["test"].copy()
    cur["tenure"] = cur["tenure"].astype(object)
    cur.loc[:2, "tenure"] = "twelve"
    cur.loc[3, "tenure"] = " "  # blanks are fine
    with pytest.raises(DataValidationError, match=r"current: column 'tenure': expected numbers"):
        monitor.drift_verdict(parts["train"], cur, cfg.schema)
    blanks = parts["test"].assign(totalcharges=parts["test"]["totalcharges"].astype(str))
    blanks.loc[:5, "totalcharges"] = " "
    assert monitor.drift_verdict(parts["train"], blanks, cfg.schema)["n_columns"] == 19


def test_boolean_numeric_and_empty_frames_are_rejected(cfg, parts):
    cur = parts["test"].assign(tenure=parts["test"]["tenure"] > 12)
    with pytest.raises(DataValidationError, match=r"column 'tenure': expected numbers"):
        monitor.drift_verdict(parts["train"], cur, cfg.schema)
    with pytest.raises(DataValidationError, match="reference: no rows"):
        monitor.drift_verdict(parts["train"].iloc[:0], parts["test"], cfg.schema)
    with pytest.raises(DataValidationError, match="current: no rows"):
        monitor.drift_verdict(parts["train"], parts["test"].iloc[:0], cfg.schema)
    all_blank = parts["test"].assign(totalcharges="")
    with pytest.raises(DataValidationError, match=r"column 'totalcharges'.*all missing"):
        monitor.drift_verdict(parts["train"], all_blank, cfg.schema)


def test_categories_compare_as_text(cfg, parts):
    cur = parts["test"].assign(seniorcitizen=parts["test"]["seniorcitizen"].astype(str))
    as_text = monitor.drift_verdict(parts["train"], cur, cfg.schema)
    as_int = monitor.drift_verdict(parts["train"], parts["test"], cfg.schema)
    assert as_text["columns"]["seniorcitizen"] == as_int["columns"]["seniorcitizen"]


def _verdict(share: float, dataset: bool, drifted: tuple[str, ...] = ()) -> dict:
    return {"share_drifted": share, "dataset_drift": dataset, "drifted_columns": list(drifted)}


def test_retrain_policy_fires_on_drift_share_and_quality_drop():
    from datetime import UTC, datetime, timedelta

    from mlfolio.config import RetrainPolicyConfig
    from mlfolio.monitor import retrain_decision

    policy = RetrainPolicyConfig()
    calm = retrain_decision(policy, _verdict(0.05, False, ("tenure",)), 2000)
    assert not calm.retrain
    assert any(r.startswith("n/a  quality drop") for r in calm.reasons)
    drift = retrain_decision(policy, _verdict(0.4, False, ("contract", "tenure")), 2000)
    assert drift.retrain and "contract, tenure" in drift.reasons[0]
    worse = retrain_decision(policy, _verdict(0.0, False), 2000, roc_auc_drop=0.05)
    assert worse.retrain and worse.reasons[-1].startswith("FIRE ROC AUC drop +0.0500")
    # guards: too few rows, or inside the cool-down, hold whatever the triggers say
    assert not retrain_decision(policy, _verdict(0.9, True), 100).retrain
    now = datetime(2026, 11, 27, tzinfo=UTC)
    held = retrain_decision(
        policy, _verdict(0.9, True), 2000, last_retrain_at=now - timedelta(hours=3), now=now
    )
    assert not held.retrain and "cool-down" in held.reasons[0]
    assert retrain_decision(
        policy, _verdict(0.9, True), 2000, last_retrain_at=now - timedelta(hours=30), now=now
    ).retrain


def test_retrain_policy_from_a_real_drift_verdict(cfg, parts):
    from mlfolio.config import RetrainPolicyConfig
    from mlfolio.monitor import drift_verdict, retrain_decision

    iid = drift_verdict(parts["train"], parts["test"], cfg.schema)
    assert not retrain_decision(RetrainPolicyConfig(min_rows=100), iid, 800).retrain


def test_no_labelled_rows_holds_a_firing_policy():
    from mlfolio.config import RetrainPolicyConfig

    held = monitor.retrain_decision(
        RetrainPolicyConfig(), _verdict(0.9, True), 2000, labelled_rows=0
    )
    assert not held.retrain and "no labelled current rows" in held.reasons[-1]
    assert monitor.retrain_decision(
        RetrainPolicyConfig(), _verdict(0.9, True), 2000, labelled_rows=10
    ).retrain


def test_prediction_drift_flags_shifted_scores_only(parts):
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 5, 3000)
    same = monitor.prediction_drift(ref, rng.beta(2, 5, 1000))
    moved = monitor.prediction_drift(ref, rng.beta(4, 3, 1000))
    assert not same["drifted"] and moved["drifted"]
    assert moved["method"] == "wasserstein" and moved["current_mean"] > moved["reference_mean"]
    with pytest.raises(DataValidationError, match="both frames"):
        monitor.prediction_drift(ref, np.array([]))


def test_quality_comparison_deltas_and_no_labels():
    from mlfolio.evaluate import classification_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    good = np.clip(y * 0.6 + rng.random(500) * 0.4, 0, 1)
    noisy = rng.random(500)
    reference = classification_metrics(y, good, 0.5)
    q = monitor.quality_comparison(reference, y, noisy, 0.5)
    assert q["labelled_rows"] == 500
    assert q["delta"]["roc_auc"] == pytest.approx(q["current"]["roc_auc"] - reference["roc_auc"])
    assert q["delta"]["roc_auc"] < -0.3
    assert monitor.quality_comparison(reference, None, None, 0.5) is None
    assert monitor.quality_comparison(reference, np.ones(10), noisy[:10], 0.5) is None
    # current rows none of which reaches the threshold: precision n/a, and so its delta
    low = monitor.quality_comparison(reference, y, noisy * 0.4, 0.5)
    assert low["current"]["precision"] is None and low["delta"]["precision"] is None
    assert low["delta"]["recall"] == pytest.approx(-reference["recall"])
    lines = terminal.drift_verdict(
        {
            "n_drifted": 0,
            "n_columns": 3,
            "drifted_columns": [],
            "share_drifted": 0.0,
            "dataset_drift": False,
            "drift_share": 0.5,
            "quality": low,
        }
    )
    assert f"recall {reference['recall']:.3f} -> 0.000 ({-reference['recall']:+.3f})" in lines[-1]


def test_retraining_rows_replace_known_ids_and_keep_dtypes(cfg, parts):
    snapshot = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    new = parts["test"].head(50).copy()
    new.loc[new.index[:20], "customerid"] = snapshot["customerid"].iloc[:20].to_numpy()
    new.loc[new.index[20:25], "customerid"] = None
    out = monitor.retraining_rows(snapshot, new, cfg.schema)
    assert list(out.columns) == list(snapshot.columns)
    assert len(out) == len(snapshot) + 50 - 20  # 20 known customers replaced, not duplicated
    assert out["customerid"].is_unique
    assert out.dtypes.equals(snapshot.dtypes)
    replaced = out.set_index("customerid").loc[new["customerid"].iloc[0]]
    assert replaced["monthlycharges"] == new["monthlycharges"].iloc[0]
    with pytest.raises(DataValidationError, match="churn"):
        monitor.retraining_rows(snapshot, new.drop(columns=["churn"]), cfg.schema)
    # the new rows come last, and retraining_data counts them: all 50 (the 20 replacing
    # known customers too), so their keys are the retraining's out-of-time rows
    same, n_new = monitor.retraining_data(snapshot, new, cfg.schema)
    pd.testing.assert_frame_equal(same, out)
    assert n_new == 50
    tail = same.iloc[len(same) - n_new :]
    assert set(tail["customerid"].iloc[:20]) == set(snapshot["customerid"].iloc[:20])
    assert tail["customerid"].iloc[20:25].str.startswith("new-").all()


def test_drift_gauges_in_prometheus_text_format(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    doc = {
        "model": {"name": "churn-classifier", "version": "3"},
        "share_drifted": 0.25,
        "n_drifted": 5,
        "dataset_drift": False,
        "created_at": "2026-11-27T12:00:00+00:00",
        "current": {"rows": 1600},
        "prediction_drift": {"score": 0.12},
        "quality": {"current": {"roc_auc": 0.81}, "delta": {"roc_auc": -0.03}},
    }
    path = monitor.write_prometheus_textfile(doc, tmp_path / "drift.prom")
    samples = {
        s.name: s for f in text_string_to_metric_families(path.read_text()) for s in f.samples
    }
    assert samples["mlfolio_drift_share"].value == 0.25
    assert samples["mlfolio_drift_share"].labels == {"model": "churn-classifier", "version": "3"}
    assert samples["mlfolio_dataset_drift"].value == 0
    assert samples["mlfolio_quality_roc_auc_delta"].value == pytest.approx(-0.03)
    assert samples["mlfolio_monitor_last_run_timestamp_seconds"].value == 1795780800
    # without labels there is no quality gauge (absent, not zero: alerts must not fire)
    names = {f.name for f in monitor.drift_gauge_families({**doc, "quality": None})}
    assert "mlfolio_quality_roc_auc" not in names and "mlfolio_drift_share" in names


def test_evidently_reports_with_prediction_and_quality(cfg, parts, tmp_path):
    rng = np.random.default_rng(2)
    ref, cur = parts["train"].head(600), shifted(parts["test"].head(400))
    ref_scores, cur_scores = rng.beta(2, 5, len(ref)), rng.beta(4, 3, len(cur))
    verdict = monitor.evidently_report(
        ref, cur, cfg.schema, tmp_path / "drift.html", prediction=(ref_scores, cur_scores)
    )
    ours = monitor.drift_verdict(ref, cur, cfg.schema)
    assert "prediction" not in verdict["columns"]  # not counted as a feature
    assert verdict["drifted_columns"] == ours["drifted_columns"]
    assert verdict["share_drifted"] == pytest.approx(ours["share_drifted"])
    html = (tmp_path / "drift.html").read_text()
    assert "Value Drift for column prediction" in html
    # the report's own headline counts what the monitor page counts: the features only
    headline = re.search(
        r'"value": "(\d+)", "label": "Columns"\}, \{"value": "(\d+)", "label": "Drifted Columns"',
        html,
    )
    assert headline, "no drifted-columns counter in Evidently's page"
    assert (int(headline[1]), int(headline[2])) == (ours["n_columns"], ours["n_drifted"])
    assert verdict["prediction"]["drifted"] is True  # the score is tested, apart
    y_ref, y_cur = rng.integers(0, 2, len(ref)), rng.integers(0, 2, len(cur))
    monitor.evidently_quality_report(
        pd.DataFrame({"target": y_ref, "prediction": ref_scores}),
        pd.DataFrame({"target": y_cur, "prediction": cur_scores}),
        tmp_path / "quality.html",
        0.5,
    )
    assert (tmp_path / "quality.html").stat().st_size > 10_000
    with pytest.raises(DataValidationError, match="target"):
        monitor.evidently_quality_report(
            pd.DataFrame({"prediction": ref_scores}),
            pd.DataFrame({"target": y_cur, "prediction": cur_scores}),
            tmp_path / "q.html",
            0.5,
        )


# -- publishing to the model server ---------------------------------------------------------
def test_publish_for_server_puts_the_verdict_on_the_servers_metrics(cfg, parts, tmp_path):
    import json
    import re

    import httpx

    from .servers import register_models, start_server, stop_server

    verdict = monitor.drift_verdict(parts["train"], shifted(parts["test"]), cfg.schema)
    doc = {
        "created_at": "2026-11-30T12:00:00+00:00",
        "model": {"name": "churn-ab-test", "version": "1"},
        "current": {"rows": len(parts["test"])},
        **verdict,
    }
    folder = tmp_path / "prediction-log"
    server = start_server(register_models(tmp_path / "registry"), "--prediction-log", str(folder))
    try:
        assert "mlfolio_drift_share" not in httpx.get(f"{server.url}/metrics").text
        path = monitor.publish_for_server(doc, folder)
        assert path == folder / monitor.SERVER_DRIFT_FILE == folder / "drift.json"
        assert json.loads(path.read_text())["drifted_columns"] == ["monthlycharges"]
        assert list(folder.glob("*.tmp")) == []  # written atomically
        text = httpx.get(f"{server.url}/metrics").text
        share = re.search(r'mlfolio_drift_share\{model="churn-ab-test",version="1"\} (\S+)', text)
        assert share and float(share.group(1)) == pytest.approx(verdict["share_drifted"])
        assert re.search(r"mlfolio_drift_columns\{[^}]*\} 1\.0", text)
    finally:
        stop_server(server.proc)


def test_importing_monitor_leaves_evidently_and_prometheus_unimported():
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from mlfolio import monitor; monitor.drift_verdict; "
        "print(json.dumps([m for m in ('evidently', 'prometheus_client') "
        "if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_retraining_rows_from_a_prediction_log_write_to_parquet(cfg, parts, tmp_path):
    """Logged rows carry numbers as numbers (totalcharges double, blank = missing), while
    the snapshot keeps the source's text: the union must still be one column type."""
    snapshot = pd.concat([parts["train"], parts["valid"]], ignore_index=True)
    assert snapshot["totalcharges"].dtype == object  # text, as the CSV had it
    new = parts["test"].head(30).copy()
    new["totalcharges"] = pd.to_numeric(new["totalcharges"], errors="coerce")
    new.loc[new.index[:3], "totalcharges"] = np.nan
    new["tenure"] = new["tenure"].astype("Int64")
    out = monitor.retraining_rows(snapshot, new, cfg.schema)
    out.to_parquet(tmp_path / "retrain.parquet", index=False)
    back = pd.read_parquet(tmp_path / "retrain.parquet")
    tail = back.tail(30)["totalcharges"]
    assert tail.isna().sum() == 3
    assert float(tail.iloc[5]) == pytest.approx(float(new["totalcharges"].iloc[5]))


# -- the drift document ---------------------------------------------------------------------
DRIFT_BEFORE = Path(__file__).parent / "fixtures" / "drift-written-before-issue22.json"


def test_a_drift_document_written_before_the_model_reads_and_writes_back_unchanged(tmp_path):
    """drift.json from a monitor stage run before DriftDoc existed (the team end-to-end
    test's): read, its fields typed; written for the server, the same keys and values."""
    written = json.loads(DRIFT_BEFORE.read_text())
    doc = monitor.DriftDoc.model_validate(written)
    assert doc.model.name == "team-e2e-5337-classifier" and doc.model.version == "1"
    assert doc.share_drifted == written["share_drifted"] and doc.dataset_drift is False
    assert doc.prediction_drift.score == written["prediction_drift"]["score"]
    assert doc.quality is None and doc.current["rows"] == 811
    assert doc.to_json() == written  # "stage" and "mlflow_run_id" (extra keys) kept
    path = monitor.publish_for_server(doc, tmp_path)
    assert json.loads(path.read_text()) == written
    assert monitor.DriftDoc.of(json.loads(path.read_text())) == doc
    gauges = {f.name: f.samples[0] for f in monitor.drift_gauge_families(doc)}
    assert gauges["mlfolio_drift_share"].labels == {
        "model": "team-e2e-5337-classifier",
        "version": "1",
    }
    assert gauges["mlfolio_monitor_current_rows"].value == 811
    assert "mlfolio_quality_roc_auc" not in gauges  # no labels: no quality gauges


def test_the_drift_document_keeps_quality_and_refuses_a_wrong_shape_naming_the_field():
    written = json.loads(DRIFT_BEFORE.read_text())
    quality = {
        "reference": {"roc_auc": 0.84},
        "current": {"roc_auc": 0.71},
        "delta": {"roc_auc": -0.13},
        "labelled_rows": 120,
        "threshold": 0.3,
    }
    doc = monitor.DriftDoc.of({**written, "quality": quality})
    assert doc.quality.delta == {"roc_auc": -0.13} and doc.to_json()["quality"] == quality
    gauges = {f.name: f.samples[0].value for f in monitor.drift_gauge_families(doc)}
    assert gauges["mlfolio_quality_roc_auc_delta"] == -0.13
    with pytest.raises(pydantic.ValidationError, match=r"model\n.*valid dictionary"):
        monitor.DriftDoc.of({**written, "model": "churn"})
    with pytest.raises(ValueError, match="share_drifted"):  # what the server's reader catches
        monitor.drift_gauge_families({**written, "share_drifted": "a lot"})


ESTIMATE = {
    "method": "cbpe",
    "rows": 1600,
    "roc_auc": 0.78,
    "roc_auc_ci": [0.75, 0.81],
    "pr_auc": 0.55,
    "f1": 0.6,
    "precision": 0.5,
    "recall": 0.75,
    "accuracy": 0.77,
    "intervals": {"roc_auc": [0.75, 0.81], "accuracy": [0.74, 0.8]},
    "calibration_error": 0.02,
    "reference_roc_auc": 0.84,
    "roc_auc_delta": -0.06,
}


def test_retrain_policy_fires_on_an_estimated_drop_before_labels():
    from mlfolio.config import RetrainPolicyConfig

    calm = _verdict(0.0, False)
    off = monitor.retrain_decision(RetrainPolicyConfig(), calm, 2000, estimated_roc_auc_drop=0.2)
    assert not off.retrain and not any("estimated" in r for r in off.reasons)  # opt-in
    policy = RetrainPolicyConfig(estimated_roc_auc_drop=0.05)
    fired = monitor.retrain_decision(policy, calm, 2000, estimated_roc_auc_drop=0.06)
    assert fired.retrain
    assert fired.reasons[-1] == "FIRE estimated ROC AUC drop +0.0600 (label-free) vs 0.05"
    small = monitor.retrain_decision(policy, calm, 2000, estimated_roc_auc_drop=0.01)
    assert not small.retrain and small.reasons[-1].startswith("ok   estimated ROC AUC drop")
    none = monitor.retrain_decision(policy, calm, 2000)
    assert not none.retrain and "n/a  estimated quality drop: no label-free estimate" in (
        none.reasons
    )
    # a firing estimate with no labelled row at all still holds: nothing new to learn from
    held = monitor.retrain_decision(
        policy, calm, 2000, labelled_rows=0, estimated_roc_auc_drop=0.06
    )
    assert not held.retrain and held.reasons[-2].startswith("FIRE estimated")


def test_drift_json_with_and_without_a_performance_estimate():
    old = {"model": {"name": "m", "version": "2"}, "share_drifted": 0.1, "n_drifted": 1}
    assert monitor.DriftDoc.of(old).performance_estimate is None  # older files still read
    assert monitor.DriftDoc.of(old).to_json() == old
    doc = {**old, "performance_estimate": {**ESTIMATE, "draws": 1000}}
    read = monitor.DriftDoc.of(doc)
    assert read.performance_estimate.roc_auc_ci == [0.75, 0.81]
    assert read.to_json() == doc  # unknown keys (draws) kept
    with pytest.raises(pydantic.ValidationError, match="performance_estimate.roc_auc"):
        monitor.DriftDoc.of({**old, "performance_estimate": {"roc_auc": "high"}})


def test_estimate_gauges_and_the_concept_shift_gauge():
    doc = {"model": {"name": "churn-classifier", "version": "3"}, "share_drifted": 0.2}
    names = {f.name for f in monitor.drift_gauge_families(doc)}
    assert not {n for n in names if "estimate" in n}  # none without an estimate
    side = {"error": {"roc_auc": -0.12}, "concept_shift_suspected": True}
    fams = monitor.drift_gauge_families(
        {**doc, "performance_estimate": {**ESTIMATE, "realised": side}}
    )
    values = {f.name: f.samples[0].value for f in fams}
    assert values["mlfolio_estimated_roc_auc"] == 0.78
    assert values["mlfolio_estimated_roc_auc_ci_low"] == 0.75
    assert values["mlfolio_estimated_roc_auc_ci_high"] == 0.81
    assert values["mlfolio_estimated_roc_auc_delta"] == pytest.approx(-0.06)
    assert values["mlfolio_estimated_accuracy"] == 0.77
    assert values["mlfolio_estimate_roc_auc_error"] == pytest.approx(-0.12)
    assert values["mlfolio_estimate_concept_shift_suspected"] == 1
    assert fams[0].samples[0].labels == {"model": "churn-classifier", "version": "3"}


def test_terminal_shows_the_estimate_and_the_realised_gap():
    lines = terminal.estimate_lines(ESTIMATE)
    assert lines == [
        "estimate:   ROC AUC 0.780 [0.750, 0.810] (-0.060 vs reference), PR AUC 0.550, "
        "F1 0.600, accuracy 0.770 on 1600 rows without labels"
    ]
    side = {
        "rows": 400,
        "estimated": {"roc_auc": 0.79},
        "realised": {"roc_auc": 0.66},
        "outside_interval": ["roc_auc"],
        "concept_shift_suspected": True,
    }
    assert terminal.estimate_lines({**ESTIMATE, "realised": side})[1] == (
        "realised:   ROC AUC estimated 0.790, realised 0.660 on 400 labelled rows; "
        "CONCEPT SHIFT? realised roc_auc outside the interval"
    )
    assert terminal.estimate_lines(None) == []
