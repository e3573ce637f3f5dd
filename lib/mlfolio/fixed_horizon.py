"""Fixed-horizon tests of a challenger − champion difference, each valid when read once.

DeLong's test of two ROC AUCs (paired: the same rows; or two independent samples), from
midranks in O(n log n) (Sun & Xu, "Fast implementation of DeLong's algorithm", IEEE Signal
Processing Letters 21(11), 2014); the two-proportion z-test and McNemar's test of
accuracy. Read repeatedly while data accrues and stopped at the first p < alpha, their
error rate grows far beyond alpha (``benchmarks/ab_bench.py``); :mod:`mlfolio.sequential`
is the test that may be read at any time.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _delong_components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components (per positive, per negative), from midranks."""
    pos, neg = score[y == 1], score[y == 0]
    m, n = len(pos), len(neg)
    ranks_all = stats.rankdata(np.r_[pos, neg])
    v10 = (ranks_all[:m] - stats.rankdata(pos)) / n  # share of negatives below each positive
    v01 = 1.0 - (ranks_all[m:] - stats.rankdata(neg)) / m  # share of positives above each negative
    return float(v10.mean()), v10, v01


def _normal_test(difference: float, variance: float, confidence: float) -> dict[str, float]:
    """Two-sided z-test and normal confidence interval of a difference."""
    se = math.sqrt(max(variance, 0.0))
    if se == 0:  # e.g. identical scores in shadow: no difference, no variance
        z = 0.0 if difference == 0 else math.copysign(math.inf, difference)
    else:
        z = difference / se
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * se
    return {
        "difference": difference,
        "ci_low": difference - half,
        "ci_high": difference + half,
        "confidence": confidence,
        "z": z,
        "p_value": float(2 * stats.norm.sf(abs(z))),
    }


def delong_auc(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """ROC AUC of one score and DeLong's variance of it."""
    auc, v10, v01 = _delong_components(np.asarray(y).astype(int), np.asarray(score, float))
    return auc, float(np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01))


def delong_paired_difference(
    y: np.ndarray, score_new: np.ndarray, score_old: np.ndarray
) -> tuple[float, float]:
    """AUC(new) − AUC(old) on the same rows and DeLong's variance of it."""
    y = np.asarray(y).astype(int)
    auc_new, v10_new, v01_new = _delong_components(y, np.asarray(score_new, float))
    auc_old, v10_old, v01_old = _delong_components(y, np.asarray(score_old, float))
    variance = np.var(v10_new - v10_old, ddof=1) / len(v10_new) + np.var(
        v01_new - v01_old, ddof=1
    ) / len(v01_new)
    return auc_new - auc_old, float(variance)


def delong_paired(
    y: np.ndarray, score_new: np.ndarray, score_old: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """DeLong's test of AUC(new) - AUC(old) for two scores of the same rows."""
    return _normal_test(*delong_paired_difference(y, score_new, score_old), confidence)


def delong_unpaired(
    y_new: np.ndarray,
    score_new: np.ndarray,
    y_old: np.ndarray,
    score_old: np.ndarray,
    confidence: float = 0.95,
) -> dict[str, float]:
    """DeLong's test of AUC(new) - AUC(old) for two independent samples."""
    (auc_new, var_new), (auc_old, var_old) = (
        delong_auc(y_new, score_new),
        delong_auc(y_old, score_old),
    )
    return _normal_test(auc_new - auc_old, var_new + var_old, confidence)


def two_proportion_test(
    k_new: int, n_new: int, k_old: int, n_old: int, confidence: float = 0.95
) -> dict[str, float]:
    """Difference of two independent proportions: pooled z-test, unpooled (Wald) interval."""
    p_new, p_old = k_new / n_new, k_old / n_old
    pooled = (k_new + k_old) / (n_new + n_old)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_new + 1 / n_old))
    diff = p_new - p_old
    z = diff / se0 if se0 > 0 else 0.0
    se = math.sqrt(p_new * (1 - p_new) / n_new + p_old * (1 - p_old) / n_old)
    return _z_result(diff, se, z, confidence)


def mcnemar_test(
    correct_new: np.ndarray, correct_old: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Difference of two paired proportions (McNemar's z-test, Wald interval)."""
    correct_new, correct_old = np.asarray(correct_new, bool), np.asarray(correct_old, bool)
    n = len(correct_new)
    only_new = int((correct_new & ~correct_old).sum())
    only_old = int((correct_old & ~correct_new).sum())
    diff = (only_new - only_old) / n
    discordant = only_new + only_old
    z = (only_new - only_old) / math.sqrt(discordant) if discordant else 0.0
    se = math.sqrt(max(discordant - (only_new - only_old) ** 2 / n, 0.0)) / n
    return {**_z_result(diff, se, z, confidence), "discordant": discordant}


def _z_result(diff: float, se: float, z: float, confidence: float) -> dict[str, float]:
    """A difference with its Wald interval (standard error ``se``) and the two-sided
    p-value of its z statistic."""
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * se
    return {
        "difference": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "confidence": confidence,
        "z": z,
        "p_value": float(2 * stats.norm.sf(abs(z))),
    }
