"""The label-free performance estimate (CBPE): calibration, expected metrics against
realised ones on synthetic rows with known probabilities and on held-out Telco rows, the
intervals' coverage and the concept-shift check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from mlfolio import data, estimate, evaluate, train

IDENTITY = estimate.Calibration("platt", {"a": 1.0, "b": 0.0})  # p = score


def realised(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    return evaluate.classification_metrics(y, score, threshold)


def quick(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """The same metrics as :func:`realised`, without log loss and Brier (4x faster)."""
    pred = score >= threshold
    return {
        "roc_auc": skm.roc_auc_score(y, score),
        "pr_auc": skm.average_precision_score(y, score),
        "accuracy": np.mean(pred == y),
        **evaluate.thresholded_metrics(y, pred),
    }


def test_expected_metrics_are_the_mean_realised_metrics_under_known_probabilities():
    rng = np.random.default_rng(0)
    p = rng.beta(1.5, 3, 800)
    est = estimate.estimate_performance(p, IDENTITY, 0.4, draws=500, seed=1)
    draws = [quick((rng.random(len(p)) < p).astype(int), p, 0.4) for _ in range(400)]
    for k in estimate.METRICS:
        mean = np.mean([d[k] for d in draws])
        spread = np.std([d[k] for d in draws])
        # ratio of expectations vs expectation of the ratio: within a tenth of the spread
        assert est[k] == pytest.approx(mean, abs=0.12 * spread + 0.002), k
        lo, hi = est["intervals"][k]
        assert lo < mean < hi and hi - lo == pytest.approx(3.92 * spread, rel=0.2), k
    assert est["roc_auc_ci"] == est["intervals"]["roc_auc"]
    assert est["rows"] == 800 and est["method"] == "cbpe"


def test_the_interval_covers_the_realised_roc_auc_at_its_confidence():
    rng = np.random.default_rng(3)
    p = rng.beta(1, 2.5, 500)
    est = estimate.estimate_performance(p, IDENTITY, 0.5, draws=2000, confidence=0.9, seed=0)
    lo, hi = est["roc_auc_ci"]
    hits = [lo <= skm.roc_auc_score(rng.random(len(p)) < p, p) <= hi for _ in range(400)]
    assert 0.85 <= np.mean(hits) <= 0.95


def test_ties_and_a_threshold_no_row_reaches():
    score = np.repeat([0.1, 0.3, 0.6], 200)
    est = estimate.estimate_performance(score, IDENTITY, 0.99, draws=200)
    # no row predicted positive: precision undefined, recall 0; ties rank one half
    assert est["precision"] is None and est["recall"] == 0 and est["f1"] == 0
    rng = np.random.default_rng(5)
    aucs = [skm.roc_auc_score(rng.random(600) < score, score) for _ in range(400)]
    assert est["roc_auc"] == pytest.approx(np.mean(aucs), abs=0.003)


def test_calibration_corrects_a_known_miscalibration_and_round_trips_as_json():
    rng = np.random.default_rng(7)
    p = rng.beta(1, 3, 3000)
    y = (rng.random(len(p)) < p).astype(int)
    raw = np.sqrt(p)  # overconfident about positives
    cal = estimate.fit_calibration(y, raw, seed=0)
    assert cal.method in ("platt", "isotonic") and "cross-validated Brier" in cal.reason
    assert cal.quality["ece"] < 0.03 < cal.quality["raw_ece"]
    assert cal.quality["brier"] < cal.quality["raw_brier"]
    assert np.abs(cal.apply(raw) - p).mean() < 0.03
    assert len(cal.bootstrap) == 50
    again = estimate.Calibration.from_json(json.loads(json.dumps(cal.to_json())))
    np.testing.assert_allclose(again.apply(raw), cal.apply(raw))
    iso = estimate.fit_calibration(y, raw, "isotonic", bootstraps=5)
    assert iso.method == "isotonic" and iso.variants(raw).shape == (5, len(raw))


def test_bad_input_is_refused_naming_what_was_expected():
    with pytest.raises(ValueError, match="both classes"):
        estimate.fit_calibration(np.zeros(10), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="calibration method"):
        estimate.fit_calibration(np.r_[0, 1, 0, 1], np.r_[0.1, 0.9, 0.2, 0.8], "beta")
    with pytest.raises(ValueError, match="runs:/x/calibration.json: key 'method'"):
        estimate.Calibration.from_json({"method": "spline"}, "runs:/x/calibration.json")
    with pytest.raises(ValueError, match="key 'params'"):
        estimate.Calibration.from_json({"method": "platt", "params": {"a": 1}})
    with pytest.raises(ValueError, match="non-empty"):
        estimate.estimate_performance(np.array([]), IDENTITY, 0.5)
    with pytest.raises(ValueError, match="finite"):
        estimate.estimate_performance(np.array([0.2, np.nan]), IDENTITY, 0.5)


def test_concept_shift_is_flagged_and_covariate_shift_is_not():
    rng = np.random.default_rng(11)
    p = rng.beta(1, 2, 1500)
    est = estimate.estimate_performance(p, IDENTITY, 0.5, seed=2)
    y = (rng.random(len(p)) < p).astype(int)
    same = estimate.compare_with_realised(est, realised(y, p, 0.5), len(p))
    assert not same["concept_shift_suspected"] and same["outside_interval"] == []
    assert abs(same["error"]["roc_auc"]) < 0.03
    flipped = np.where(p > 0.6, 1 - y, y)  # P(y | x) changed for one segment
    shifted = estimate.compare_with_realised(est, realised(flipped, p, 0.5), len(p))
    assert shifted["concept_shift_suspected"] and "roc_auc" in shifted["outside_interval"]
    assert shifted["error"]["roc_auc"] < -0.1


def test_estimate_on_held_out_telco_rows_is_close_to_the_realised_metrics(cfg, parts):
    """Calibrated on validation rows as the evaluate stage does; estimated on the test
    rows and on a covariate-shifted resample of them (outcomes kept)."""
    model = train.fit(cfg.schema, "logreg", {"max_iter": 2000}, parts["train"], cfg.seed)
    y_valid = data.target_vector(parts["valid"], cfg.schema).to_numpy()
    cal = estimate.fit_calibration(y_valid, train.predict_scores(model, parts["valid"], cfg.schema))
    assert cal.quality["ece"] < 0.05
    test = parts["test"]
    y = data.target_vector(test, cfg.schema).to_numpy()
    score = train.predict_scores(model, test, cfg.schema)
    rng = np.random.default_rng(0)
    w = np.exp(-test["tenure"].to_numpy() / 20.0)  # towards new customers
    shifted = rng.choice(len(test), size=len(test) // 2, replace=False, p=w / w.sum())
    for rows in (np.arange(len(test)), shifted):
        est = estimate.estimate_performance(score[rows], cal, 0.35, seed=0)
        real = realised(y[rows], score[rows], 0.35)
        lo, hi = est["roc_auc_ci"]
        assert lo <= real["roc_auc"] <= hi
        assert abs(est["roc_auc"] - real["roc_auc"]) < 0.04
        assert abs(est["accuracy"] - real["accuracy"]) < 0.04
        assert abs(est["f1"] - real["f1"]) < 0.06


def test_a_large_log_is_estimated_in_blocks_quickly():
    import time

    p = np.random.default_rng(0).random(50_000)
    start = time.perf_counter()
    est = estimate.estimate_performance(p, IDENTITY, 0.5, draws=100)  # 2 blocks of draws
    assert time.perf_counter() - start < 20  # ~0.5 s on an idle core
    # p uniform on (0, 1), score = p: AUC = (integral of a (a - a^2 / 2)) / (1/2 * 1/2) = 5/6
    assert est["roc_auc"] == pytest.approx(5 / 6, abs=0.005)


def test_auto_takes_isotonic_only_for_a_shape_platt_cannot_follow():
    rng = np.random.default_rng(2)
    score = rng.random(3000)
    logistic = 1 / (1 + np.exp(-(3 * np.log(score / (1 - score)) - 1)))
    y = (rng.random(3000) < logistic).astype(int)
    assert estimate.fit_calibration(y, score, bootstraps=0).method == "platt"
    step = np.where(score < 0.5, 0.1, 0.8)  # a cliff: no logistic curve in logit(s) fits
    y = (rng.random(3000) < step).astype(int)
    cal = estimate.fit_calibration(y, score, bootstraps=0)
    assert cal.method == "isotonic" and "more than 1% lower" in cal.reason


def test_bootstrap_fits_are_drawn_a_block_at_a_time_as_all_at_once():
    """Blocks of bootstrap multiplicities (bounded memory) are the draws of one call."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 3000).astype(float)
    score = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0.001, 0.999)
    bootstraps = 2 * estimate.BOOTSTRAP_BLOCK + 1
    counts = (
        np.random.default_rng(7)
        .multinomial(len(y), np.full(len(y), 1 / len(y)), size=bootstraps)
        .astype(float)
    )
    iso = estimate.fit_calibration(y, score, "isotonic", bootstraps=bootstraps, seed=7)
    assert iso.bootstrap == [
        dict(zip(("x", "y"), estimate._isotonic_fit(score, y, w), strict=True)) for w in counts
    ]
    platt = estimate.fit_calibration(y, score, "platt", bootstraps=bootstraps, seed=7)
    want = estimate._platt_fit(score, y, counts)
    got = np.array([[b["a"], b["b"]] for b in platt.bootstrap])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
