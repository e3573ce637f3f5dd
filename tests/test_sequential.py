"""The always-valid sequential test (mlfolio.sequential): its formulas, and its error rate
when read after every batch of rows, beside DeLong's fixed-horizon test read the same way."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from mlfolio import fixed_horizon, sequential

ALPHA = 0.05
PEEKS = range(50, 1001, 50)  # 20 reads, every 50 rows up to 1000


def _rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes of a logistic model's world: the true probability and the outcome."""
    p = 1 / (1 + np.exp(-(1.5 * rng.standard_normal(n) - 1)))
    return p, (rng.random(n) < p).astype(int)


def _noisy(rng: np.random.Generator, p: np.ndarray, sd: float) -> np.ndarray:
    """A model that knows p up to noise on the logit scale (more noise: worse model)."""
    return 1 / (1 + np.exp(-(np.log(p / (1 - p)) + sd * rng.standard_normal(len(p)))))


def test_row_losses_match_sklearn():
    rng = np.random.default_rng(0)
    p, y = _rows(rng, 500)
    assert sequential.row_loss(y, p).mean() == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    assert sequential.row_loss(y, p, "brier").mean() == pytest.approx(
        skm.brier_score_loss(y, p), rel=1e-12
    )
    with pytest.raises(ValueError, match="loss must be one of"):
        sequential.row_loss(y, p, "hinge")


def test_the_statistic_is_the_normal_mixture_ratio_and_the_sequence_matches_the_p_value():
    rng = np.random.default_rng(1)
    p, y = _rows(rng, 400)
    new, old = _noisy(rng, p, 0.2), _noisy(rng, p, 2.0)
    out = sequential.paired_test(y, new, old, alpha=ALPHA, mixture_rows=300)
    d = sequential.row_loss(y, new) - sequential.row_loss(y, old)
    v = np.var(d, ddof=1) / len(d)
    tau2 = sequential.mixture_ratio(ALPHA) / 300 * np.var(d, ddof=1)
    ratio = math.sqrt(v / (v + tau2)) * math.exp(tau2 * d.mean() ** 2 / (2 * v * (v + tau2)))
    assert out["statistic"] == pytest.approx(math.log(ratio), rel=1e-9)
    assert out["p_value"] == pytest.approx(min(1, 1 / ratio), rel=1e-9)
    assert out["difference"] == pytest.approx(d.mean())
    assert out["rows"] == {"paired": 400}
    # 0 lies outside the confidence sequence exactly when p <= alpha
    assert (out["p_value"] <= ALPHA) == (out["ci_high"] < 0 or out["ci_low"] > 0)
    assert out["decision"] == "challenger better" and out["ci_high"] < 0
    # the mixture is tuned where the normal-mixture boundary on z² is lowest (r ≈ 8)
    r = sequential.mixture_ratio(ALPHA)
    assert 6 < r < 10

    two = sequential.two_sample_test(y[:150], new[:150], y[150:], old[150:], alpha=ALPHA)
    assert two["rows"] == {"champion": 250, "challenger": 150}
    assert two["difference"] == pytest.approx(
        sequential.row_loss(y[:150], new[:150]).mean()
        - sequential.row_loss(y[150:], old[150:]).mean()
    )


def test_the_roc_auc_variant_uses_delongs_difference_and_variance():
    rng = np.random.default_rng(4)
    p, y = _rows(rng, 600)
    new, old = _noisy(rng, p, 0.2), _noisy(rng, p, 2.0)
    paired = sequential.paired_test(y, new, old, metric="roc_auc", alpha=ALPHA)
    ref = fixed_horizon.delong_paired(y, new, old)
    assert paired["difference"] == pytest.approx(ref["difference"])
    assert paired["z"] == pytest.approx(ref["z"])
    assert paired["means"]["challenger"] == pytest.approx(skm.roc_auc_score(y, new))
    assert paired["decision"] == "challenger better" and paired["ci_low"] > 0  # higher AUC
    # the other way round it is worse
    assert sequential.paired_test(y, old, new, metric="roc_auc")["decision"] == ("challenger worse")
    two = sequential.two_sample_test(y[:300], new[:300], y[300:], old[300:], metric="roc_auc")
    ref = fixed_horizon.delong_unpaired(y[:300], new[:300], y[300:], old[300:])
    assert two["difference"] == pytest.approx(ref["difference"])
    assert two["z"] == pytest.approx(ref["z"])
    # one class: no ROC AUC, no test (the losses still compare)
    zeros = np.zeros(50, int)
    assert sequential.paired_test(zeros, new[:50], old[:50], metric="roc_auc") is None
    assert sequential.paired_test(zeros, new[:50], old[:50]) is not None


def test_no_evidence_without_a_difference_and_none_without_rows():
    rng = np.random.default_rng(2)
    p, y = _rows(rng, 300)
    same = sequential.paired_test(y, p, p)
    assert (same["statistic"], same["p_value"], same["decision"]) == (0.0, 1.0, "continue")
    assert same["ci_low"] == same["ci_high"] == 0
    assert sequential.paired_test(y[:1], p[:1], p[:1]) is None
    assert sequential.two_sample_test(y[:1], p[:1], y, p) is None


def _first_reads(rng: np.random.Generator, shadow: bool, worse_sd: float | None):
    """One simulated experiment read at every peek: did each test ever reject?"""
    n = PEEKS[-1]
    p, y = _rows(rng, n)
    if shadow:  # the same rows scored by both; A/A: two equally good (exchangeable) models
        new, old = _noisy(rng, p, 0.7), _noisy(rng, p, 0.7 if worse_sd is None else worse_sd)
    else:  # each row scored by one variant
        arm = rng.random(n) < 0.5
        new = old = _noisy(rng, p, 0.7)
        if worse_sd is not None:
            old = _noisy(rng, p, worse_sd)
    seq, fixed = {"log_loss": None, "roc_auc": None}, None
    for k in PEEKS:
        for metric in seq:
            kw = {"metric": metric, "alpha": ALPHA, "mixture_rows": 500}
            if shadow:
                q = sequential.paired_test(y[:k], new[:k], old[:k], **kw)
            else:
                c = arm[:k]
                q = sequential.two_sample_test(y[:k][c], new[:k][c], y[:k][~c], old[:k][~c], **kw)
            if seq[metric] is None and q["decision"] != "continue":
                seq[metric] = (k, q["decision"])
        if shadow:
            z = fixed_horizon.delong_paired(y[:k], new[:k], old[:k])
        else:
            z = fixed_horizon.delong_unpaired(y[:k][c], new[:k][c], y[:k][~c], old[:k][~c])
        if fixed is None and z["p_value"] < ALPHA:
            fixed = k
    return seq, fixed


@pytest.mark.parametrize("shadow", [False, True], ids=["ab", "shadow"])
def test_reading_at_every_peek_keeps_the_false_positive_rate_and_delongs_does_not(shadow):
    """150 seeded A/A experiments per design, each read 20 times: the sequential test
    rejects in at most alpha of them; DeLong's, read the same way, in far more."""
    rng = np.random.default_rng(24 + shadow)
    reads = [_first_reads(rng, shadow, None) for _ in range(150)]
    for metric in ("log_loss", "roc_auc"):
        seq_rate = np.mean([s[metric] is not None for s, _ in reads])
        assert seq_rate <= ALPHA, (metric, seq_rate)
    delong_rate = np.mean([f is not None for _, f in reads])
    assert delong_rate >= 2 * ALPHA, delong_rate  # ~0.2 with 20 reads


def test_a_better_challenger_is_found_and_never_called_worse():
    rng = np.random.default_rng(7)
    reads = [_first_reads(rng, True, 1.5) for _ in range(60)]
    for metric in ("log_loss", "roc_auc"):
        decided = [s[metric] for s, _ in reads if s[metric] is not None]
        assert len(decided) >= 54, metric  # power >= 90% by 1000 paired rows
        assert {d for _, d in decided} == {"challenger better"}
        assert np.median([k for k, _ in decided]) <= 500
