"""Metrics, bootstrap comparison and the promotion gate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mlfolio import evaluate, views
from mlfolio.config import GateConfig


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    good = np.clip(0.35 * y + rng.normal(0.4, 0.2, 600), 0, 1)
    weak = np.clip(0.10 * y + rng.normal(0.45, 0.2, 600), 0, 1)
    return y, good, weak


def test_metrics_match_sklearn(scores):
    y, good, _ = scores
    m = evaluate.classification_metrics(y, good, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, good))
    assert set(m) >= {"roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1"}
    cm = evaluate.confusion(y, good, 0.5)
    assert sum(cm.values()) == len(y)
    assert m["recall"] == pytest.approx(cm["tp"] / (cm["tp"] + cm["fn"]))


def test_max_f1_threshold_beats_neighbours(scores):
    y, good, _ = scores
    t = evaluate.max_f1_threshold(y, good)
    best = evaluate.classification_metrics(y, good, t)["f1"]
    for other in (t - 0.1, t + 0.1):
        assert evaluate.classification_metrics(y, good, other)["f1"] <= best


def test_weighted_auc_equals_auc_of_resampled_rows(scores):
    y, good, _ = scores
    rng = np.random.default_rng(0)
    weights = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=20)
    fast = evaluate.weighted_roc_auc(y.astype(float), np.round(good, 2), weights)
    for w, value in zip(weights, fast, strict=True):
        idx = np.repeat(np.arange(len(y)), w)
        assert value == pytest.approx(roc_auc_score(y[idx], np.round(good, 2)[idx]), abs=1e-12)


def test_bootstrap_detects_a_real_gain_and_not_a_null_one(scores):
    y, good, weak = scores
    gain = evaluate.bootstrap_auc_difference(y, good, weak, samples=500, seed=1)
    assert gain["ci_low"] > 0 and gain["difference"] > 0
    same = evaluate.bootstrap_auc_difference(y, good, good, samples=200, seed=1)
    assert same["difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_gate_passes_first_model_and_explains_itself(scores):
    y, good, weak = scores
    cand = evaluate.classification_metrics(y, good)
    verdict = evaluate.gate(GateConfig(min_roc_auc=0.7), cand)
    assert verdict.passed
    assert verdict.reasons[0].startswith("PASS test ROC AUC")
    assert "no champion yet" in verdict.reasons[-1]


def test_gate_refuses_a_worse_or_equal_model(scores):
    y, good, weak = scores
    worse = evaluate.classification_metrics(y, weak)
    comparison = evaluate.bootstrap_auc_difference(y, weak, good, samples=300)
    verdict = evaluate.gate(GateConfig(min_roc_auc=0.5), worse, comparison, "3")
    assert not verdict.passed
    assert any(r.startswith("FAIL ROC AUC gain over champion v3") for r in verdict.reasons)
    tie = evaluate.bootstrap_auc_difference(y, good, good, samples=100)
    assert not evaluate.gate(GateConfig(min_roc_auc=0.5), worse, tie, "3").passed


def test_gate_failure_states_the_requirement_and_a_pass_its_claim():
    comparison = {"difference": -0.0027, "ci_low": -0.0141, "ci_high": 0.0088, "confidence": 0.95}
    cand = {"roc_auc": 0.8392, "pr_auc": 0.61, "log_loss": 0.42}
    verdict = evaluate.gate(GateConfig(min_roc_auc=0.8), cand, comparison, "1")
    assert verdict.reasons == [
        "PASS test ROC AUC 0.8392 >= 0.8",
        "FAIL ROC AUC gain over champion v1 -0.0027 (95% CI -0.0141 .. +0.0088): needs its "
        "lower bound above +0.0",
    ]
    gain = {**comparison, "difference": 0.02, "ci_low": 0.004, "ci_high": 0.03}
    strict = GateConfig(min_roc_auc=0.9, min_pr_auc=0.7, max_log_loss=0.4)
    assert evaluate.gate(strict, cand, gain, "1").reasons == [
        "FAIL test ROC AUC 0.8392: needs >= 0.9",
        "FAIL test PR AUC 0.6100: needs >= 0.7",
        "FAIL test log loss 0.4200: needs <= 0.4",
        "PASS ROC AUC gain over champion v1 +0.0200 (95% CI +0.0040 .. +0.0300) has its "
        "lower bound above +0.0",
    ]


SAME = (
    "SAME model as champion v1 (identical model files, mlfolio.model_hash): no gain to "
    "measure, nothing to promote"
)


def test_gate_says_same_model_instead_of_a_zero_gain(scores):
    y, good, _ = scores
    cand = evaluate.classification_metrics(y, good)
    tie = evaluate.bootstrap_auc_difference(y, good, good, samples=100)
    verdict = evaluate.gate(GateConfig(min_roc_auc=0.5), cand, tie, "1", same_model=True)
    assert not verdict.passed and verdict.same_model_as == "1"
    assert verdict.reasons == [f"PASS test ROC AUC {cand['roc_auc']:.4f} >= 0.5", SAME]
    # the bar still applies to the same model
    strict = evaluate.gate(GateConfig(min_roc_auc=0.99), cand, tie, "1", same_model=True)
    assert strict.reasons == [f"FAIL test ROC AUC {cand['roc_auc']:.4f}: needs >= 0.99", SAME]
    assert not strict.passed and strict.same_model_as is None
    assert evaluate.gate(GateConfig(min_roc_auc=0.5), cand, tie, "1").same_model_as is None


def test_gate_absolute_thresholds(scores):
    y, _, weak = scores
    m = evaluate.classification_metrics(y, weak)
    verdict = evaluate.gate(GateConfig(min_roc_auc=0.99, max_log_loss=0.01, min_pr_auc=0.99), m)
    assert not verdict.passed
    assert sum(r.startswith("FAIL") for r in verdict.reasons) == 3


def test_plot_curves_draws_a_confusion_matrix_per_model_at_its_threshold(scores):
    y, good, weak = scores
    fig = views.plot_curves(y, {"candidate": good, "champion": weak}, 0.5)
    assert len(fig.axes) == 5
    fig = views.plot_curves(
        y, {"candidate": good, "champion": weak}, {"candidate": 0.4, "champion": 0.6}
    )
    titles = [ax.get_title() for ax in fig.axes[3:]]
    assert titles == [
        "candidate: confusion at its threshold 0.40",
        "champion: confusion at its threshold 0.60",
    ]
    cells = [int(t.get_text()) for t in fig.axes[4].texts]
    assert sum(cells) == len(y)
    cm = evaluate.confusion(y, weak, 0.6)
    assert cells == [cm["tn"], cm["fp"], cm["fn"], cm["tp"]]


def test_threshold_curve_peaks_where_max_f1_chose(scores):
    y, good, _ = scores
    curve = evaluate.threshold_curve(y, good)
    assert len(curve["threshold"]) == 99 and curve["threshold"][0] == 0.01
    chosen = evaluate.max_f1_threshold(y, good)
    best = curve["threshold"][int(np.argmax(curve["f1"]))]
    assert abs(best - chosen) <= 0.05
    at = evaluate.classification_metrics(y, good, 0.5)
    i = curve["threshold"].index(0.5)
    assert curve["precision"][i] == pytest.approx(at["precision"], abs=1e-4)
    assert curve["recall"][i] == pytest.approx(at["recall"], abs=1e-4)
    assert curve["recall"] == sorted(curve["recall"], reverse=True)


def test_segment_metrics_per_value_largest_first(scores):
    y, good, _ = scores
    segments = np.where(np.arange(len(y)) % 3 == 0, "small", "large")
    segments[:5] = "tiny"
    table = evaluate.segment_metrics(y, good, 0.5, segments, min_rows=10)
    assert list(table) == ["large", "small"]  # tiny has 5 rows < 10: left out
    large = segments == "large"
    assert table["large"]["rows"] == large.sum()
    assert table["large"]["roc_auc"] == pytest.approx(roc_auc_score(y[large], good[large]))
    assert table["large"]["positive_rate"] == pytest.approx(y[large].mean())
    one_class = evaluate.segment_metrics(np.zeros(20), good[:20], 0.5, np.full(20, "a"))
    assert one_class["a"]["roc_auc"] is None and one_class["a"]["recall"] is None


def test_precision_without_predicted_positives_is_undefined_not_zero(scores):
    y, good, _ = scores
    capped = 0.9 * good  # no score reaches 0.9
    none_predicted = evaluate.classification_metrics(y, capped, threshold=0.95)
    assert none_predicted["precision"] is None
    assert none_predicted["recall"] == 0 and none_predicted["f1"] == 0  # defined: positives missed
    no_positives = evaluate.classification_metrics(np.r_[np.zeros(50), 1], good[:51], 0.5)
    assert no_positives["precision"] is not None
    only_negatives = np.zeros(len(y), dtype=int)
    # recall with no positive row is undefined too; F1 then as well when nothing is predicted
    assert (
        evaluate.segment_metrics(only_negatives, capped, 0.95, np.full(len(y), "a"))["a"]["recall"]
        is None
    )
    curve = evaluate.threshold_curve(y, capped)
    above = [i for i, t in enumerate(curve["threshold"]) if t > capped.max()]
    assert above and all(curve["precision"][i] is None for i in above)
    assert all(curve["recall"][i] == 0 for i in above)
    assert all(p is not None for i, p in enumerate(curve["precision"]) if i not in above)
    segments = np.where(capped > 0.5, "high", "low")  # "low" predicts nothing at 0.5
    table = evaluate.segment_metrics(y, capped, 0.5, segments)
    assert table["low"]["precision"] is None and table["high"]["precision"] is not None
    intervals = evaluate.bootstrap_intervals(y, capped, 0.95, samples=50)
    assert intervals["precision"] == {"value": None, "low": None, "high": None}
    assert intervals["recall"]["value"] == 0


def test_weighted_average_precision_equals_sklearn_with_weights(scores):
    from sklearn.metrics import average_precision_score

    y, good, _ = scores
    rounded = np.round(good, 2)  # ties, as real scores have
    weights = np.random.default_rng(2).multinomial(len(y), np.full(len(y), 1 / len(y)), size=10)
    fast = evaluate.weighted_average_precision(y.astype(float), rounded, weights)
    for w, value in zip(weights, fast, strict=True):
        assert value == pytest.approx(average_precision_score(y, rounded, sample_weight=w))


def test_bootstrap_intervals_bracket_the_test_value(scores):
    y, good, _ = scores
    intervals = evaluate.bootstrap_intervals(y, good, 0.5, samples=300, seed=4)
    assert set(intervals) == {"roc_auc", "pr_auc", "precision", "recall", "f1", "accuracy"}
    point = evaluate.classification_metrics(y, good, 0.5)
    for name, iv in intervals.items():
        assert iv["value"] == pytest.approx(point[name])
        assert iv["low"] < iv["value"] < iv["high"], name
        assert iv["high"] - iv["low"] < 0.2, name


def _many_rows(n: int, seed: int = 11):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.27).astype(int)
    good = 1 / (1 + np.exp(-(1.6 * y + rng.normal(-1.0, 1.0, n))))
    weak = 1 / (1 + np.exp(-(1.3 * y + rng.normal(-1.0, 1.0, n))))
    return y, good, weak


def test_bootstrap_under_the_row_bound_resamples_every_row(scores):
    y, good, weak = scores
    bounded = evaluate.bootstrap_auc_difference(y, good, weak, 200, seed=2, max_rows=len(y))
    every = evaluate.bootstrap_auc_difference(y, good, weak, 200, seed=2, max_rows=None)
    assert bounded == every
    assert every["rows"] == len(y)
    iv = evaluate.bootstrap_intervals(y, good, 0.5, 200, seed=2, max_rows=len(y))
    assert iv == evaluate.bootstrap_intervals(y, good, 0.5, 200, seed=2, max_rows=None)


def test_bootstrap_results_do_not_depend_on_how_resamples_are_batched(scores, monkeypatch):
    """Resamples are drawn and scored a block at a time (memory stays bounded): the same
    seeded draws, so the same intervals, whatever the block size."""
    y, good, weak = scores
    whole = evaluate.bootstrap_auc_difference(y, good, weak, 300, seed=5)
    whole_iv = evaluate.bootstrap_intervals(y, good, 0.5, 300, seed=5)
    monkeypatch.setattr(evaluate, "BOOTSTRAP_BLOCK_CELLS", 7 * len(y))  # 7 resamples a block
    assert evaluate.bootstrap_auc_difference(y, good, weak, 300, seed=5) == whole
    assert evaluate.bootstrap_intervals(y, good, 0.5, 300, seed=5) == whole_iv


def test_bootstrap_above_the_row_bound_resamples_a_sample_and_rescales_its_spread():
    """Above ``max_rows`` the bootstrap runs on a seeded stratified sample of that many
    rows and its spread is rescaled by sqrt(sample / all rows) around the value on all
    rows (m-out-of-n bootstrap): the interval matches the one from every row."""
    y, good, weak = _many_rows(60_000)
    every = evaluate.bootstrap_auc_difference(y, good, weak, 400, seed=3, max_rows=None)
    bounded = evaluate.bootstrap_auc_difference(y, good, weak, 400, seed=3, max_rows=6_000)
    assert bounded["rows"] == 6_000 and every["rows"] == 60_000
    assert bounded["difference"] == every["difference"]  # the value is from all rows
    assert bounded["ci_low"] < bounded["difference"] < bounded["ci_high"]
    width = every["ci_high"] - every["ci_low"]
    assert bounded["ci_high"] - bounded["ci_low"] == pytest.approx(width, rel=0.2)
    assert (bounded["ci_low"] + bounded["ci_high"]) / 2 == pytest.approx(
        (every["ci_low"] + every["ci_high"]) / 2, abs=0.15 * width
    )

    iv_every = evaluate.bootstrap_intervals(y, good, 0.4, 400, seed=3, max_rows=None)
    iv_bounded = evaluate.bootstrap_intervals(y, good, 0.4, 400, seed=3, max_rows=6_000)
    for name, iv in iv_bounded.items():
        assert iv["value"] == iv_every[name]["value"], name
        assert iv["low"] < iv["value"] < iv["high"], name
        assert iv["high"] - iv["low"] == pytest.approx(
            iv_every[name]["high"] - iv_every[name]["low"], rel=0.25
        ), name


def test_bootstrap_sample_keeps_the_class_balance():
    y, _, _ = _many_rows(50_000)
    rows = evaluate.bootstrap_rows(y, 5_000, seed=1)
    assert len(rows) == 5_000 and len(set(rows.tolist())) == 5_000
    assert y[rows].mean() == pytest.approx(y.mean(), abs=1 / 5_000)
    assert evaluate.bootstrap_rows(y, 60_000, seed=1) is None


def test_gate_needs_enough_rows_the_champion_never_saw_and_names_the_set():
    gain = {"difference": 0.02, "ci_low": 0.004, "ci_high": 0.03, "confidence": 0.95}
    cand = {"roc_auc": 0.85}
    cfg = GateConfig(min_roc_auc=0.8, min_unseen_rows=200)
    few = {"row_set": "unseen_test", "rows": 175, "excluded": 625}
    verdict = evaluate.gate(cfg, cand, gain, "1", compared=few)
    assert not verdict.passed  # the gain alone would pass: too few fair rows refuse it
    assert verdict.reasons[1] == (
        "FAIL compared with champion v1 on 175 test rows the champion never saw (625 test "
        "rows it trained or chose its threshold on left out): needs gate.min_unseen_rows 200"
    )
    assert verdict.reasons[2].startswith("PASS ROC AUC gain over champion v1 +0.0200")
    recent = {"row_set": "out_of_time", "rows": 640, "excluded": 0}
    verdict = evaluate.gate(cfg, cand, gain, "1", compared=recent)
    assert verdict.passed
    assert verdict.reasons[1] == (
        "PASS compared with champion v1 on 640 out-of-time rows (the newest labelled rows, "
        "unseen by both models) (gate.min_unseen_rows 200)"
    )
    # a champion, but no measurable difference on the rows left: refused, never "no champion"
    lonely = evaluate.gate(cfg, cand, None, "1", compared={**few, "rows": 0})
    assert not lonely.passed and not any("no champion" in r for r in lonely.reasons)
    assert lonely.reasons[-1] == (
        "FAIL ROC AUC gain over champion v1: not measurable: needs 2 rows of each class "
        "among the rows compared"
    )


def test_row_sets_compare_on_their_rows_and_out_of_time_decides_when_large_enough(scores):
    y, good, weak = scores
    mask = np.arange(len(y)) < 400
    found = evaluate.row_set_comparison(y, good, weak, mask, samples=200, seed=1)
    assert found["rows"] == 400 and found["positives"] == int(y[:400].sum())
    assert found["candidate_roc_auc"] == pytest.approx(roc_auc_score(y[:400], good[:400]))
    assert found["champion_roc_auc"] == pytest.approx(roc_auc_score(y[:400], weak[:400]))
    direct = evaluate.bootstrap_auc_difference(y[:400], good[:400], weak[:400], 200, seed=1)
    assert found["comparison"] == direct
    one_class = evaluate.row_set_comparison(y, good, weak, y == 1, samples=200)
    assert one_class["comparison"] is None and "candidate_roc_auc" not in one_class
    sets = {"unseen_test": {"rows": 800}, "out_of_time": {"rows": 199}}
    assert evaluate.deciding_row_set(sets, 200) == "unseen_test"
    assert evaluate.deciding_row_set({**sets, "out_of_time": {"rows": 200}}, 200) == "out_of_time"
    assert evaluate.deciding_row_set({"unseen_test": {"rows": 800}}, 200) == "unseen_test"
