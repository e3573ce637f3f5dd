"""An always-valid test of challenger against champion: a mixture SPRT on per-row losses.

A fixed-horizon test (DeLong's, a t-test) keeps its 5% error only if it is read once, at a
sample size fixed in advance. The monitor reads the A/B report after every run; stopping
the first time p < 0.05 rejects a true null far more often than 5% (the benchmark,
``benchmarks/ab_bench.py``, measures how much). The test here may be read after every
row, every run, or whenever one likes, and acted on the first time it rejects: its false
positive rate stays at most ``alpha``.

The method is the mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and
Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations Research
70(3), 2022; arXiv:1512.04922), with a normal mixture over the effect (Robbins 1970; the
normal-mixture boundary of Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021).
The data is the per-row loss of each model's score against the outcome: log loss
(default) or Brier score, both proper scoring rules, so the lower expected loss is the
better forecaster.

- **Shadow** (both models scored the same rows): the paired differences
  ``d = loss(challenger) - loss(champion)``; the estimate is their mean and its variance
  ``s²/n``.
- **A/B** (each row scored by one variant): the difference of the arms' mean losses and
  its variance ``s²_challenger/n_challenger + s²_champion/n_champion`` (Johari et al.'s
  two-sample mSPRT, without requiring equal arms).

With the estimate ``Δ`` of the loss difference, its variance ``V`` and the mixture spread
``τ²`` (the normal prior over the true difference), the mixture likelihood ratio of
"difference ≠ 0" against "difference = 0" is

    Λ = sqrt(V / (V + τ²)) · exp(τ² Δ² / (2 V (V + τ²)))

and ``p = min(1, 1/Λ)`` is an always-valid p-value: under the null Λ is a non-negative
martingale with mean 1, so by Ville's inequality P(Λ ever reaches 1/alpha) ≤ alpha, at
whatever rows it is read. The rows {Δ': Λ(Δ - Δ') < 1/alpha} are the matching confidence
sequence (an interval that covers the true difference at every reading at once). ``τ²`` is
set, in units of the per-row variance, so that the boundary is tightest at
``mixture_rows`` labelled rows (per arm or paired). Λ is a function of sums only, so the
order in which outcomes arrive does not matter. The variance is estimated from the rows
(plug-in, as in Johari et al.); the guarantee is asymptotic in the number of rows, which
the benchmark checks from 100 rows on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOSSES = ("log_loss", "brier")
_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] for the log loss


def row_loss(y: np.ndarray, score: np.ndarray, loss: str = "log_loss") -> np.ndarray:
    """Each row's loss of the probability ``score`` against the outcome ``y`` (0/1)."""
    y, p = np.asarray(y, float), np.asarray(score, float)
    if loss == "brier":
        return (p - y) ** 2
    if loss != "log_loss":
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def mixture_ratio(alpha: float) -> float:
    """τ² × (information at the tuned rows): the ``r`` minimising the normal-mixture
    boundary ``(1 + 1/r)(2 log(1/alpha) + log(1 + r))`` on z² (Howard et al. 2021, §3)."""
    r = np.exp(np.linspace(np.log(0.01), np.log(1e4), 20001))
    bound = (1 + 1 / r) * (2 * math.log(1 / alpha) + np.log1p(r))
    return float(r[np.argmin(bound)])


def log_likelihood_ratio(
    difference: Any, variance: Any, unit_variance: Any, alpha: float, mixture_rows: int
) -> np.ndarray:
    """log Λ of the normal-mixture SPRT, element-wise (arrays broadcast).

    ``variance`` is the estimate's variance V, ``unit_variance`` the variance of one row
    (paired) or of one row per arm (A/B), so ``unit_variance / variance`` counts rows.
    A zero variance with a zero difference is no evidence (log Λ = 0); with a non-zero
    difference it is conclusive (+inf).
    """
    d = np.asarray(difference, float)
    v = np.asarray(variance, float)
    tau2 = mixture_ratio(alpha) / mixture_rows * np.asarray(unit_variance, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = tau2 / v
        llr = -0.5 * np.log1p(r) + 0.5 * d**2 / v * r / (1 + r)
    degenerate = ~(v > 0)
    return np.where(degenerate, np.where(d == 0, 0.0, np.inf), llr)


def half_width(variance: Any, unit_variance: Any, alpha: float, mixture_rows: int) -> np.ndarray:
    """Half the width of the (1 − alpha) confidence sequence around the estimate."""
    v = np.asarray(variance, float)
    tau2 = mixture_ratio(alpha) / mixture_rows * np.asarray(unit_variance, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = tau2 / v
        width = np.sqrt(v * (1 + r) / r * (2 * math.log(1 / alpha) + np.log1p(r)))
    return np.where(v > 0, width, 0.0)


def p_value(log_ratio: Any) -> np.ndarray:
    """The always-valid p-value min(1, 1/Λ)."""
    return np.minimum(1.0, np.exp(-np.asarray(log_ratio, float)))


def _result(
    test: str,
    loss: str,
    difference: float,
    variance: float,
    unit_variance: float,
    alpha: float,
    mixture_rows: int,
    rows: dict[str, int],
    means: dict[str, float],
) -> dict[str, Any]:
    llr = float(log_likelihood_ratio(difference, variance, unit_variance, alpha, mixture_rows))
    p = float(p_value(llr))
    half = float(half_width(variance, unit_variance, alpha, mixture_rows))
    if p <= alpha:
        decision = "challenger better" if difference < 0 else "challenger worse"
    else:
        decision = "continue"
    return {
        "test": test,
        "method": "mixture SPRT (Johari, Pekelis & Walsh 2017)",
        "loss": loss,
        "alpha": alpha,
        "mixture_rows": int(mixture_rows),
        "rows": rows,
        "mean_loss": means,
        "difference": difference,  # challenger − champion mean loss: negative is better
        "ci_low": difference - half,  # the (1 − alpha) confidence sequence at this reading
        "ci_high": difference + half,
        "statistic": llr,  # log of the mixture likelihood ratio Λ
        "z": difference / math.sqrt(variance) if variance > 0 else 0.0,
        "p_value": p,  # always valid: min(1, 1/Λ)
        "decision": decision,
    }


def paired_test(
    y: np.ndarray,
    score_new: np.ndarray,
    score_old: np.ndarray,
    loss: str = "log_loss",
    alpha: float = 0.05,
    mixture_rows: int = 1000,
) -> dict[str, Any] | None:
    """Shadow: both scores of the same labelled rows. None with fewer than two rows."""
    new, old = row_loss(y, score_new, loss), row_loss(y, score_old, loss)
    n = len(new)
    if n < 2:
        return None
    d = new - old
    unit = float(np.var(d, ddof=1))
    return _result(
        f"always-valid paired test of the per-row {loss} (shadow: same {n} rows)",
        loss,
        float(d.mean()),
        unit / n,
        unit,
        alpha,
        mixture_rows,
        {"paired": n},
        {"champion": float(old.mean()), "challenger": float(new.mean())},
    )


def two_sample_test(
    y_new: np.ndarray,
    score_new: np.ndarray,
    y_old: np.ndarray,
    score_old: np.ndarray,
    loss: str = "log_loss",
    alpha: float = 0.05,
    mixture_rows: int = 1000,
) -> dict[str, Any] | None:
    """A/B: each arm's labelled rows on their own. None when an arm has fewer than two."""
    new, old = row_loss(y_new, score_new, loss), row_loss(y_old, score_old, loss)
    if min(len(new), len(old)) < 2:
        return None
    var_new, var_old = float(np.var(new, ddof=1)), float(np.var(old, ddof=1))
    return _result(
        f"always-valid two-sample test of the mean {loss} (A/B: each row saw one variant)",
        loss,
        float(new.mean() - old.mean()),
        var_new / len(new) + var_old / len(old),
        var_new + var_old,
        alpha,
        mixture_rows,
        {"champion": len(old), "challenger": len(new)},
        {"champion": float(old.mean()), "challenger": float(new.mean())},
    )
