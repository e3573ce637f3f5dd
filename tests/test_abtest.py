"""A/B and shadow reports on real Telco outcomes: two models trained on the Telco file,
scored on held-out customers, logged as the model server would log them (A/B: a 50/50
split by entity hash; shadow: both scores per request), with the real churn as outcome."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import matplotlib
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mlfolio import abtest, config, data, features, registry, tracking, views
from mlfolio.errors import DataValidationError, LockTimeoutError, RegistryError

from .conftest import CHURN_PARAMS

matplotlib.use("Agg")
MODEL = "churn-ab-test"


@dataclass
class Scored:
    ids: np.ndarray  # customer ids of the held-out rows
    actual: np.ndarray  # their real churn (0/1)
    strong: np.ndarray  # logistic regression on every feature
    weak: np.ndarray  # logistic regression on two weak features
    model: object  # the strong pipeline (registered in the registry test)
    X: pd.DataFrame


@pytest.fixture(scope="module")
def scored() -> Scored:
    cfg = config.load(CHURN_PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    X, y = features.xy(df, cfg.schema)
    X_tr, X_te, y_tr, y_te, _, ids = train_test_split(
        X, y, df[cfg.schema.id_column], test_size=0.4, stratify=y, random_state=0
    )
    strong = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=2000))
    strong.fit(X_tr, y_tr)
    weak_schema = cfg.schema.model_copy(
        update={"numeric": ["monthlycharges"], "categorical": ["gender"]}
    )
    weak = features.build_model_pipeline(weak_schema, LogisticRegression(max_iter=2000))
    weak.fit(X_tr[weak_schema.features], y_tr)
    return Scored(
        ids=ids.to_numpy().astype(str),
        actual=y_te.to_numpy().astype(int),
        strong=strong.predict_proba(X_te)[:, 1],
        weak=weak.predict_proba(X_te[weak_schema.features])[:, 1],
        model=strong,
        X=X_tr,
    )


def _rows(
    s: Scored,
    variant: str,
    version: str,
    score: np.ndarray,
    shadow: bool,
    threshold: float,
    mask: np.ndarray | None = None,
) -> pd.DataFrame:
    mask = np.ones(len(score), bool) if mask is None else mask
    n = int(mask.sum())
    return pd.DataFrame(
        {
            "request_id": [f"req-{i}" for i in np.flatnonzero(mask)],
            "entity_id": s.ids[mask],
            "ts": pd.date_range("2026-11-01", periods=n, freq="min", tz="UTC"),
            "model_name": MODEL,
            "model_version": version,
            "variant": variant,
            "shadow": shadow,
            "score": score[mask],
            "label": (score[mask] >= threshold).astype(int),
            "threshold": threshold,
            "actual": s.actual[mask].astype(float),
        }
    )


def shadow_log(
    s: Scored, champion: np.ndarray, challenger: np.ndarray, versions: tuple[str, str] = ("1", "2")
) -> pd.DataFrame:
    """Every request answered by the champion and scored in shadow by the challenger."""
    return pd.concat(
        [
            _rows(s, "challenger", versions[1], challenger, True, 0.3),
            _rows(s, "champion", versions[0], champion, False, 0.35),
        ],
        ignore_index=True,
    )  # challenger rows first: pairing must not need order


def in_challenger(ids: np.ndarray, salt: str = "") -> np.ndarray:
    """Sticky 50/50 routing by entity id hash, as the server does it."""
    return np.array(
        [int(hashlib.sha256(f"{salt}{i}".encode()).hexdigest()[:8], 16) % 2 == 1 for i in ids]
    )


def ab_log(
    s: Scored,
    champion: np.ndarray,
    challenger: np.ndarray,
    salt: str = "",
    versions: tuple[str, str] = ("1", "2"),
) -> pd.DataFrame:
    arm = in_challenger(s.ids, salt)
    return pd.concat(
        [
            _rows(s, "champion", versions[0], champion, False, 0.35, ~arm),
            _rows(s, "challenger", versions[1], challenger, False, 0.3, arm),
        ],
        ignore_index=True,
    )


LOGS = {"ab": ab_log, "shadow": shadow_log}


def _check_sane(c: dict) -> None:
    assert c["ci_low"] <= c["difference"] <= c["ci_high"]
    assert 0 <= c["p_value"] <= 1
    assert c["bootstrap"]["ci_low"] <= c["difference"] <= c["bootstrap"]["ci_high"]
    acc = c["accuracy"]
    assert acc["ci_low"] <= acc["difference"] <= acc["ci_high"]


def test_design_detection(scored):
    assert abtest.design(shadow_log(scored, scored.strong, scored.weak)) == "shadow"
    ab = ab_log(scored, scored.strong, scored.weak)
    assert abtest.design(ab) == "ab"
    assert abtest.design(ab[ab["variant"] == "champion"]) == "single"
    mixed = pd.concat([ab, shadow_log(scored, scored.strong, scored.weak)])
    with pytest.raises(DataValidationError, match="mixes"):
        abtest.design(mixed)


@pytest.mark.parametrize("column", ["score", "variant", "actual", "shadow", "request_id"])
def test_missing_column_is_named(scored, column):
    log = ab_log(scored, scored.strong, scored.weak).drop(columns=column)
    with pytest.raises(DataValidationError, match=f"missing column.*{column}"):
        abtest.ab_report(log)


def test_bad_values_are_named(scored):
    log = ab_log(scored, scored.strong, scored.weak)
    with pytest.raises(DataValidationError, match="'variant'.*canary"):
        abtest.design(log.assign(variant=np.where(log.index < 5, "canary", log["variant"])))
    with pytest.raises(DataValidationError, match="'actual'"):
        abtest.design(log.assign(actual=log["actual"] * 2))
    with pytest.raises(DataValidationError, match="no rows"):
        abtest.design(log.head(0))
    two_versions = log.assign(model_version=np.where(log.index < 5, "9", log["model_version"]))
    with pytest.raises(DataValidationError, match="'model_version'.*'9'"):
        abtest.compare(two_versions)


def test_variant_metrics_match_sklearn(scored):
    log = ab_log(scored, scored.strong, scored.weak)
    log.loc[log.index % 7 == 0, "actual"] = np.nan  # outcomes not all known yet
    table = abtest.variant_metrics(log, bootstrap_samples=200).set_index("variant")
    assert list(table.index) == ["champion", "challenger"]
    for variant, rows in log.groupby("variant"):
        row = table.loc[variant]
        lab = rows[rows["actual"].notna()]
        y, score = lab["actual"].astype(int), lab["score"]
        assert (row["rows"], row["labelled"]) == (len(rows), len(lab))
        assert row["positive_rate"] == pytest.approx(rows["label"].mean())
        assert row["actual_rate"] == pytest.approx(y.mean())
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score), abs=1e-12)
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(y, lab["label"]))
        assert row["log_loss"] == pytest.approx(skm.log_loss(y, score), rel=1e-9)
        assert row["brier"] == pytest.approx(skm.brier_score_loss(y, score), rel=1e-9)
        assert row["roc_auc_ci_low"] < row["roc_auc"] < row["roc_auc_ci_high"]
        assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
        assert row["model_version"] == rows["model_version"].iloc[0]


@pytest.mark.parametrize("kind", ["ab", "shadow"])
def test_strong_challenger_is_promoted(scored, kind):
    report = abtest.ab_report(LOGS[kind](scored, scored.weak, scored.strong), bootstrap_samples=300)
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became null
    c, rec = report["comparison"], report["recommendation"]
    assert report["design"] == kind and report["model_name"] == MODEL
    assert ("paired DeLong" if kind == "shadow" else "independent ROC") in c["test"]
    assert c["accuracy"]["test"] == (
        "McNemar test" if kind == "shadow" else "two-proportion z-test"
    )
    _check_sane(c)
    assert c["difference"] > 0.15 and c["p_value"] < 1e-6
    assert rec["action"] == "promote", rec["reasons"]
    assert rec["reasons"][0].startswith("promote: challenger v2 vs champion v1")
    assert (rec["champion_version"], rec["challenger_version"]) == ("1", "2")
    # DeLong's interval and the bootstrap's agree on real data
    assert c["ci_low"] == pytest.approx(c["bootstrap"]["ci_low"], abs=0.015)
    assert c["ci_high"] == pytest.approx(c["bootstrap"]["ci_high"], abs=0.015)


@pytest.mark.parametrize("kind", ["ab", "shadow"])
def test_weak_challenger_is_rolled_back(scored, kind):
    report = abtest.ab_report(LOGS[kind](scored, scored.strong, scored.weak), bootstrap_samples=300)
    c, rec = report["comparison"], report["recommendation"]
    _check_sane(c)
    assert c["ci_high"] < 0
    assert rec["action"] == "roll back", rec["reasons"]
    assert "significantly worse" in rec["reasons"][0]


def test_identical_models_in_shadow_keep(scored):
    report = abtest.ab_report(
        shadow_log(scored, scored.strong, scored.strong), bootstrap_samples=200
    )
    c = report["comparison"]
    assert c["difference"] == 0 and c["p_value"] == 1.0
    assert report["recommendation"]["action"] == "keep"
    assert report["recommendation"]["reasons"][0].startswith("keep: inconclusive")


def test_null_ab_comparison_is_rarely_significant(scored):
    """Same model on both arms, 20 different hash splits: p > alpha in most, never promote."""
    p_values, actions = [], set()
    for seed in range(20):
        comparison = abtest.compare(
            ab_log(scored, scored.strong, scored.strong, f"s{seed}"),
            bootstrap_samples=50,
            seed=seed,
        )
        _check_sane(comparison)
        p_values.append(comparison["p_value"])
        actions.add(abtest.recommend(comparison)["action"])
    assert sum(p <= 0.05 for p in p_values) <= 3, p_values
    assert "promote" not in actions


def test_too_few_labels_keep_and_say_how_many(scored):
    log = ab_log(scored, scored.weak, scored.strong)
    keep = log.groupby("variant").cumcount() < 60  # 60 outcomes known per arm
    log.loc[~keep, "actual"] = np.nan
    report = abtest.ab_report(log, bootstrap_samples=100)
    rec = report["recommendation"]
    assert rec["action"] == "keep"
    assert rec["reasons"][0].startswith("keep: too few labels — 60 labelled rows")
    assert "200 needed" in rec["reasons"][0]
    assert report["comparison"]["champion"]["labelled"] == 60
    seq = report["comparison"]["sequential"]
    assert seq["rows"] == {"champion": 60, "challenger": 60}
    # the same 60 rows per arm decide once the minimum allows it
    delong = abtest.recommend(report["comparison"], min_labelled=50, method="delong")
    assert delong["action"] == "promote"
    always_valid = abtest.recommend(report["comparison"], min_labelled=50)
    assert always_valid["action"] == ("promote" if seq["p_value"] <= 0.05 else "keep")


def test_the_sequential_test_decides_and_delong_is_reported_beside_it(scored):
    report = abtest.ab_report(
        ab_log(scored, scored.weak, scored.strong), bootstrap_samples=100, mixture_rows=500
    )
    json.dumps(report, allow_nan=False)
    seq, rec = report["comparison"]["sequential"], report["recommendation"]
    assert report["parameters"]["method"] == rec["method"] == "sequential"
    assert report["parameters"]["mixture_rows"] == seq["mixture_rows"] == 500
    assert seq["metric"] == "roc_auc" and "mixture SPRT" in seq["method"]
    labelled = report["comparison"]
    assert seq["rows"] == {
        "champion": labelled["champion"]["labelled"],
        "challenger": labelled["challenger"]["labelled"],
    }
    assert seq["decision"] == "challenger better" and seq["p_value"] <= 0.05
    assert 0 < seq["ci_low"] <= seq["difference"] <= seq["ci_high"]
    assert seq["difference"] == pytest.approx(report["comparison"]["difference"])  # DeLong's
    assert seq["statistic"] == pytest.approx(-np.log(seq["p_value"]), rel=1e-9)
    assert rec["action"] == "promote"
    assert "always-valid p =" in rec["reasons"][0] and "roc_auc is higher" in rec["reasons"][0]
    assert any("fixed-horizon, reported beside" in r for r in rec["reasons"])
    assert "always-valid mixture SPRT" in rec["summary"]

    # the Brier score instead, and the old decision rule on request
    brier = abtest.ab_report(
        ab_log(scored, scored.weak, scored.strong), bootstrap_samples=100, metric="brier"
    )
    assert brier["comparison"]["sequential"]["metric"] == "brier"
    assert brier["recommendation"]["action"] == "promote"
    loss = abtest.ab_report(
        ab_log(scored, scored.weak, scored.strong), bootstrap_samples=100, metric="log_loss"
    )
    q = loss["comparison"]["sequential"]
    assert q["metric"] == "log_loss" and q["ci_high"] < 0  # a lower loss is better
    assert q["means"]["challenger"] == pytest.approx(
        skm.log_loss(*_labelled(ab_log(scored, scored.weak, scored.strong), "challenger"))
    )
    assert loss["recommendation"]["action"] == "promote"
    assert "its log_loss is lower" in loss["recommendation"]["reasons"][0]
    worse = abtest.ab_report(
        shadow_log(scored, scored.strong, scored.weak), bootstrap_samples=100, metric="log_loss"
    )
    assert worse["recommendation"]["action"] == "roll back"
    assert "its log_loss is higher" in worse["recommendation"]["reasons"][0]
    delong = abtest.ab_report(
        ab_log(scored, scored.weak, scored.strong), bootstrap_samples=100, method="delong"
    )
    assert delong["recommendation"]["method"] == "delong"
    assert delong["recommendation"]["reasons"][0].startswith("promote:")
    assert "CI lower bound" in delong["recommendation"]["reasons"][0]
    with pytest.raises(ValueError, match="method must be one of"):
        abtest.recommend(report["comparison"], method="bayes")


def test_an_inconclusive_sequential_test_keeps_even_when_delong_read_now_would_act(scored):
    """A small true gain on 200 rows per arm: DeLong, read at this one moment, may already
    call it; the always-valid test asks for more rows and says reading again is fine."""
    rng = np.random.default_rng(3)
    logit = np.log(scored.strong / (1 - scored.strong))
    blurred = 1 / (1 + np.exp(-(logit + rng.standard_normal(len(logit)))))
    log = ab_log(scored, blurred, scored.strong)
    keep = log.groupby("variant").cumcount() < 200
    log.loc[~keep, "actual"] = np.nan
    report = abtest.ab_report(log, bootstrap_samples=100)
    seq, rec = report["comparison"]["sequential"], report["recommendation"]
    assert seq["decision"] == "continue" and seq["p_value"] > 0.05
    assert seq["ci_low"] < 0 < seq["ci_high"]
    assert rec["action"] == "keep"
    assert rec["reasons"][0].startswith("keep: inconclusive — the always-valid p")
    assert "reading this again later is allowed" in rec["reasons"][0]
    # DeLong read at this moment calls it (p ≈ 0.015): valid only if this were the one read
    assert report["comparison"]["p_value"] < 0.05
    assert abtest.recommend(report["comparison"], method="delong")["action"] == "promote"


def test_the_sequential_test_runs_on_labels_of_one_class(scored):
    """ROC AUC needs both classes; the loss comparison does not (and without it, the
    default roc_auc test keeps for too few labels)."""
    log = shadow_log(scored, scored.weak, scored.strong)
    log = log[log["request_id"].isin(log.loc[log["actual"] == 0, "request_id"])]
    report = abtest.ab_report(log, bootstrap_samples=50, min_labelled=10, metric="log_loss")
    assert report["comparison"]["difference"] is None
    seq = report["comparison"]["sequential"]
    assert seq["rows"]["paired"] == int((scored.actual == 0).sum())
    assert report["recommendation"]["action"] in ("promote", "keep")
    assert any("one class only" in r for r in report["recommendation"]["reasons"])
    default = abtest.ab_report(log, bootstrap_samples=50, min_labelled=10)
    assert default["comparison"]["sequential"] is None
    assert default["recommendation"]["action"] == "keep"
    assert default["recommendation"]["reasons"][0].startswith("keep: too few labels")


def _labelled(log: pd.DataFrame, variant: str) -> tuple[np.ndarray, np.ndarray]:
    rows = log[(log["variant"] == variant) & log["actual"].notna()]
    return rows["actual"].to_numpy().astype(int), rows["score"].to_numpy()


def test_min_improvement_holds_back_a_small_gain(scored):
    comparison = abtest.compare(
        shadow_log(scored, scored.weak, scored.strong), bootstrap_samples=50
    )
    rec = abtest.recommend(comparison, min_improvement=0.5)
    assert rec["action"] == "keep" and "min_improvement" in rec["reasons"][0]


def test_no_outcomes_and_single_variant(scored):
    log = shadow_log(scored, scored.strong, scored.weak).assign(actual=np.nan)
    report = abtest.ab_report(log, bootstrap_samples=50)
    json.dumps(report, allow_nan=False)
    assert report["comparison"]["difference"] is None
    assert report["recommendation"]["action"] == "keep"
    assert "too few labels" in report["recommendation"]["reasons"][0]

    single = ab_log(scored, scored.strong, scored.weak)
    single = single[single["variant"] == "champion"]
    report = abtest.ab_report(single, bootstrap_samples=50)
    json.dumps(report, allow_nan=False)
    assert report["design"] == "single" and report["comparison"]["test"] is None
    assert report["recommendation"]["action"] == "keep"
    assert "nothing to compare" in report["recommendation"]["reasons"][0]
    assert len(report["variants"]) == 1
    assert "nothing to compare" in views.comparison_table(report)["note"].iloc[0]


def test_notebook_views(scored):
    log = shadow_log(scored, scored.weak, scored.strong)
    report = abtest.ab_report(log, bootstrap_samples=50)
    table = views.variant_table(report)
    assert list(table.index) == ["champion v1", "challenger v2 (shadow)"]
    comparison = views.comparison_table(report)
    assert list(comparison.index) == [
        "roc_auc (always valid)",
        "ROC AUC",
        "ROC AUC (bootstrap)",
        "accuracy",
    ]
    seq = report["comparison"]["sequential"]
    assert comparison.loc["roc_auc (always valid)", "p_value"] == round(seq["p_value"], 4)
    old = {**report, "comparison": {**report["comparison"]}}
    del old["comparison"]["sequential"]  # an ab.json from before the sequential test
    assert list(views.comparison_table(old).index)[0] == "ROC AUC"
    assert "**PROMOTE**" in views.recommendation_markdown(report).data
    fig = views.plot_variants(log)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # two ROC curves + diagonal
    matplotlib.pyplot.close(fig)


# -- the registry acting on a report ------------------------------------------------------
@pytest.fixture
def versions(tmp_path, scored):
    """Three versions of one model in a throwaway SQLite registry."""
    cfg = config.load(CHURN_PARAMS)
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(
                update={
                    "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_location": (tmp_path / "art").as_uri(),
                }
            )
        }
    )
    tracking.configure(cfg)
    try:
        with mlflow.start_run() as run:
            uri = tracking.log_model(scored.model, scored.X)
        yield [registry.register(MODEL, uri, run.info.run_id, {}) for _ in range(3)]
    finally:
        mlflow.set_tracking_uri(None)


def test_act_on_ab(scored, versions):
    v1, v2, v3 = versions
    registry.set_alias(v1, registry.CHAMPION, "first")
    registry.set_alias(v2, registry.CHALLENGER, "candidate")

    # a report about another challenger is stale: refused, naming both versions
    stale = abtest.ab_report(
        shadow_log(scored, scored.weak, scored.strong, ("1", "3")), bootstrap_samples=50
    )
    with pytest.raises(RegistryError, match="challenger v3.*challenger v2"):
        registry.act_on_ab(MODEL, stale)
    with pytest.raises(RegistryError, match="not 'other-model'"):
        registry.act_on_ab("other-model", stale)

    # roll back: challenger v2 is worse; the alias goes, champion stays, history records it
    worse = abtest.ab_report(
        ab_log(scored, scored.strong, scored.weak, versions=("1", "2")), bootstrap_samples=50
    )
    done = registry.act_on_ab(MODEL, worse, "/runs/ab-1")
    assert done["action"] == "roll back" and done["challenger"] is None
    assert registry.get_alias(MODEL, registry.CHALLENGER) is None
    assert registry.get_alias(MODEL, registry.CHAMPION).version == "1"
    last = registry.alias_history(MODEL)[-1]
    assert (last["alias"], last["version"], last["previous_version"], last["removed"]) == (
        "challenger",
        None,
        "2",
        True,
    )
    assert last["reason"].startswith("A/B roll back: ab test of challenger v2")
    assert last["run_dir"] == "/runs/ab-1" and last["by"] == "pytest"
    client = mlflow.MlflowClient()
    assert (
        "A/B roll back" in client.get_model_version(MODEL, "2").tags["mlfolio.rolled_back_reason"]
    )

    # keep: nothing moves
    registry.set_alias(v3, registry.CHALLENGER, "next candidate")
    same = abtest.ab_report(
        shadow_log(scored, scored.strong, scored.strong, ("1", "3")), bootstrap_samples=50
    )
    before = registry.alias_history(MODEL)
    assert registry.act_on_ab(MODEL, same)["events"] == []
    assert registry.alias_history(MODEL) == before

    # promote: champion moves to v3 with the A/B result as reason, challenger alias removed
    better = abtest.ab_report(
        shadow_log(scored, scored.weak, scored.strong, ("1", "3")), bootstrap_samples=50
    )
    done = registry.act_on_ab(MODEL, better, "/runs/ab-2")
    assert done["action"] == "promote" and done["champion"] == "3"
    assert registry.get_alias(MODEL, registry.CHAMPION).version == "3"
    assert registry.get_alias(MODEL, registry.CHALLENGER) is None
    promoted, removed = registry.alias_history(MODEL)[-2:]
    assert (promoted["alias"], promoted["version"], promoted["previous_version"]) == (
        "champion",
        "3",
        "1",
    )
    assert "always-valid mixture SPRT" in promoted["reason"] and "roc_auc" in promoted["reason"]
    assert (removed["alias"], removed["previous_version"]) == ("challenger", "3")
    assert (
        client.get_model_version(MODEL, "3").tags["mlfolio.promotion_reason"] == promoted["reason"]
    )

    # acting twice on the same report is refused: it is stale now
    with pytest.raises(RegistryError, match="stale.*champion v1.*champion v3"):
        registry.act_on_ab(MODEL, better)


def test_act_on_ab_checks_and_promotes_under_the_promotion_lock(scored, versions, monkeypatch):
    """A pipeline promotion cannot slip between the A/B staleness check and the move:
    while act_on_ab moves champion, the promotion lock is held (a promoter waits), and a
    promoter that compared against the old champion is refused afterwards."""
    v1, v2, v3 = versions
    registry.set_alias(v1, registry.CHAMPION, "first")
    registry.set_alias(v3, registry.CHALLENGER, "candidate")
    better = abtest.ab_report(
        shadow_log(scored, scored.weak, scored.strong, ("1", "3")), bootstrap_samples=50
    )
    seen = {}
    real_set_alias = registry.set_alias

    def set_alias_watching_the_lock(ref, alias, *args, **kwargs):
        if alias == registry.CHAMPION:
            with pytest.raises(LockTimeoutError):
                with registry.registry_lock(MODEL, "promote", timeout_s=0.2):
                    pass
            seen["locked"] = True
        return real_set_alias(ref, alias, *args, **kwargs)

    monkeypatch.setattr(registry, "set_alias", set_alias_watching_the_lock)
    registry.act_on_ab(MODEL, better, "/runs/ab")
    assert seen == {"locked": True}
    late = registry.promote(v2, "1", "gain over champion v1", "/runs/pipeline")
    assert not late.promoted and late.champion == "3"
    move = [e for e in registry.alias_history(MODEL) if e["alias"] == "champion"][-1]
    assert (move["previous_version"], move["compared_against"]) == ("1", "1")


# -- the report as gauges on the server's /metrics (mlfolio.monitor.prometheus) ----------
def _exposed(report: dict) -> dict[str, list]:
    """The A/B gauges as Prometheus' text format parses them back: name -> samples."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mlfolio import monitor

    class _Collector:
        def collect(self):
            return monitor.ab_gauge_families(report)

    reg = CollectorRegistry()
    reg.register(_Collector())
    text = generate_latest(reg).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize("kind", ["ab", "shadow"])
def test_a_worse_challenger_is_a_gauge_the_alert_reads(scored, kind):
    report = abtest.ab_report(
        LOGS[kind](scored, scored.strong, scored.weak), bootstrap_samples=100, model_name=MODEL
    )
    assert report["recommendation"]["action"] == "roll back"
    c = report["comparison"]
    got = _exposed(report)
    labels = {"model": MODEL, "champion_version": "1", "challenger_version": "2", "design": kind}
    for name, value in (
        ("mlfolio_ab_roc_auc_difference", c["difference"]),
        ("mlfolio_ab_roc_auc_difference_ci_low", c["ci_low"]),
        ("mlfolio_ab_roc_auc_difference_ci_high", c["ci_high"]),
        ("mlfolio_ab_challenger_worse", 1.0),
        ("mlfolio_ab_sequential_p_value", c["sequential"]["p_value"]),
        ("mlfolio_ab_sequential_difference", c["sequential"]["difference"]),
    ):
        [sample] = got[name]
        assert sample.labels == labels and sample.value == pytest.approx(value)
    assert got["mlfolio_ab_roc_auc_difference_ci_high"][0].value < 0
    rows = {s.labels["variant"]: s.value for s in got["mlfolio_ab_labelled_rows"]}
    assert rows == {
        "champion": c["champion"]["labelled"],
        "challenger": c["challenger"]["labelled"],
    }
    [stamp] = got["mlfolio_ab_last_run_timestamp_seconds"]
    assert abs(stamp.value - pd.Timestamp(report["created_at"]).timestamp()) < 1


def test_ab_gauges_of_a_kept_challenger_and_of_reports_without_a_comparison(scored):
    same = abtest.ab_report(shadow_log(scored, scored.strong, scored.strong), bootstrap_samples=50)
    assert same["recommendation"]["action"] == "keep"
    got = _exposed(same)
    assert got["mlfolio_ab_challenger_worse"][0].value == 0
    assert got["mlfolio_ab_roc_auc_difference"][0].value == pytest.approx(0)

    # labels not in yet: rows and the verdict (0), no difference
    unlabelled = shadow_log(scored, scored.strong, scored.weak).assign(actual=np.nan)
    got = _exposed(abtest.ab_report(unlabelled, bootstrap_samples=50))
    assert set(got) == {
        "mlfolio_ab_challenger_worse",
        "mlfolio_ab_labelled_rows",
        "mlfolio_ab_last_run_timestamp_seconds",
    }
    assert {s.value for s in got["mlfolio_ab_labelled_rows"]} == {0}

    # one variant served: nothing compared, no gauges (a stale verdict's alert resolves)
    single = ab_log(scored, scored.strong, scored.weak)
    single = single[single["variant"] == "champion"]
    assert _exposed(abtest.ab_report(single, bootstrap_samples=50)) == {}


def test_publish_ab_for_server_feeds_the_servers_collector(scored, tmp_path, caplog):
    from mlfolio import monitor
    from mlfolio.serve.metrics import AbCollector

    report = abtest.ab_report(
        ab_log(scored, scored.strong, scored.weak), bootstrap_samples=50, model_name=MODEL
    )
    folder = tmp_path / "prediction-log"
    collector = AbCollector(folder / monitor.SERVER_AB_FILE)
    assert list(collector.collect()) == []  # no report yet
    path = monitor.publish_ab_for_server(report, folder)
    assert path == folder / "ab.json" and list(folder.glob("*.tmp")) == []
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    names = {f.name: f for f in collector.collect()}
    assert names["mlfolio_ab_challenger_worse"].samples[0].value == 1
    path.write_text("{not json")
    with caplog.at_level("WARNING"):
        assert list(collector.collect()) == []
    assert "unreadable, no A/B gauges" in caplog.text


def test_the_gauge_reads_the_roll_back_action_the_report_writes():
    """The server's gauge module keeps its own copy of the action's spelling (it must not
    import the statistics): a renamed action would silently leave the alert silent."""
    from mlfolio.monitor import prometheus

    assert prometheus.ROLL_BACK in abtest.ACTIONS
