"""A/B and shadow tests read at every peek: the always-valid sequential test against DeLong.

The monitor reads the A/B report after every run and acts the first time it is
significant. This benchmark reads both tests that way — every ``--peek-every`` labelled
rows, up to ``--max-rows`` — in ``--sims`` seeded simulations per design and scenario:

* **A/A** (no true difference): the share of simulations in which a test ever declared a
  difference is its false positive rate under peeking. ``mlfolio.sequential``'s mixture
  SPRT should stay at or below ``--alpha``; DeLong's fixed-horizon test, read the same
  way, does not (its rate read once, at the last peek only, is printed beside it).
* **true difference**: the median labelled rows to a decision (the right one), the share
  decided by ``--max-rows`` and the share decided the wrong way.

Data: ``data/telco_churn.csv`` split 50/50 (stratified, seed 0): models are fitted on the
first half and score the second, the pool of (score, real outcome) rows a simulation draws
from, with replacement. Models (mlfolio.features' pipeline + scikit-learn's
LogisticRegression): ``full`` on every feature; ``half_a`` and ``half_b`` on the two
halves of the training rows; ``reduced`` without ``WITHOUT``'s columns (contract,
tenure, internetservice, totalcharges, paymentmethod).

* A/B design (each row scored by one variant): every row goes to the challenger or the
  champion with probability 1/2. A/A: ``full`` on both arms. True difference: champion
  ``reduced``, challenger ``full``. Tests: the two-sample sequential tests of the mean
  ``--loss`` (log loss) and of ROC AUC (``monitoring.ab.metric``'s default); DeLong for
  two independent ROC curves.
* Shadow design (both variants score every row): A/A: ``half_a`` and ``half_b``, which of
  them is "champion" drawn per row at random (an exact null: the two scores are
  exchangeable); the same model on both sides would never differ at all. True difference:
  champion ``reduced``, challenger ``full``. Tests: the paired sequential tests of the
  per-row ``--loss`` difference and of the ROC AUC difference; DeLong's paired test.

All tests are vectorised across simulations; DeLong from midranks (O(n log n) per read,
Sun & Xu 2014), checked against ``mlfolio.fixed_horizon`` on the first simulations. The
last line gives the worst of the two designs for the sequential test and the smaller of
DeLong's two rates.

    .venv/bin/python benchmarks/ab_bench.py --sims 2000 --peek-every 100   # ~2-3 min
    .venv/bin/python benchmarks/ab_bench.py --sims 300 --max-rows 1000     # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from mlfolio import config, data, features, fixed_horizon, sequential

ROOT = Path(__file__).resolve().parents[1]
# The champion of the "true difference" scenarios is fitted without these columns.
WITHOUT = ("contract", "tenure", "internetservice", "totalcharges", "paymentmethod")


def fit_pool(seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Outcomes of the held-out half and each model's scores on it."""
    cfg = config.load(ROOT / "parameters" / "churn.yaml")
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    X, y = features.xy(df, cfg.schema)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.5, stratify=y, random_state=seed)
    reduced = cfg.schema.model_copy(
        update={
            "numeric": [c for c in cfg.schema.numeric if c not in WITHOUT],
            "categorical": [c for c in cfg.schema.categorical if c not in WITHOUT],
        }
    )

    def fit(schema, rows) -> np.ndarray:
        model = features.build_model_pipeline(schema, LogisticRegression(max_iter=2000))
        model.fit(X_tr.loc[rows, schema.features], y_tr.loc[rows])
        return model.predict_proba(X_te[schema.features])[:, 1]

    half = np.zeros(len(X_tr), bool)
    half[np.random.default_rng(seed).permutation(len(X_tr))[: len(X_tr) // 2]] = True
    scores = {
        "full": fit(cfg.schema, X_tr.index),
        "half_a": fit(cfg.schema, X_tr.index[half]),
        "half_b": fit(cfg.schema, X_tr.index[~half]),
        "reduced": fit(reduced, X_tr.index),
    }
    return y_te.to_numpy().astype(int), scores


# -- DeLong, vectorised over simulations (rows of the arrays) ------------------------------
def _ties(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sort per simulation: the order, and for each sorted position the first and
    last position of its group of tied scores."""
    k = s.shape[1]
    order = np.argsort(s, axis=1)
    ordered = np.take_along_axis(s, order, 1)
    new = np.ones_like(ordered, bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    idx = np.arange(k)
    first = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    last_of = np.ones_like(new)
    last_of[:, :-1] = new[:, 1:]
    last = np.minimum.accumulate(np.where(last_of, idx, k - 1)[:, ::-1], axis=1)[:, ::-1]
    return order, first, last


def _components(s: np.ndarray, y: np.ndarray, mask: np.ndarray, ties=None):
    """Per-row DeLong components of the rows in ``mask`` (original order): v10 on
    positives (share of negatives below, ties half), v01 on negatives (share of
    positives above), 0 elsewhere; and the counts of positives and negatives."""
    order, first, last = _ties(s) if ties is None else ties
    ys, ms = np.take_along_axis(y, order, 1), np.take_along_axis(mask, order, 1)
    pos, neg = ms & (ys == 1), ms & (ys == 0)
    m, n = pos.sum(1, keepdims=True), neg.sum(1, keepdims=True)
    cum_pos, cum_neg = np.cumsum(pos, 1), np.cumsum(neg, 1)
    neg_below = np.take_along_axis(cum_neg - neg, first, 1)
    neg_tied = np.take_along_axis(cum_neg, last, 1) - neg_below
    pos_upto = np.take_along_axis(cum_pos, last, 1)
    pos_tied = pos_upto - np.take_along_axis(cum_pos - pos, first, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        v10 = np.where(pos, (neg_below + 0.5 * neg_tied) / n, 0.0)
        v01 = np.where(neg, (m - pos_upto + 0.5 * pos_tied) / m, 0.0)
    back = np.empty_like(order)
    np.put_along_axis(back, order, np.arange(s.shape[1])[None, :], 1)
    take = lambda a: np.take_along_axis(a, back, 1)  # noqa: E731 - sorted -> original
    return take(v10), take(v01), take(pos), take(neg), m[:, 0], n[:, 0]


def _masked_var(v: np.ndarray, mask: np.ndarray, k: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = v.sum(1) / k
        return ((v - mean[:, None]) ** 2 * mask).sum(1) / (k - 1)


def delong_unpaired(s, y, arm):
    """DeLong for two independent ROC curves (arm True: challenger): AUC difference, its
    variance, and the per-row variance (each arm's variance times its rows, summed)."""
    parts = []
    ties = _ties(s)  # one sort serves both arms
    for mask in (arm, ~arm):
        v10, v01, pos, neg, m, n = _components(s, y, mask, ties)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = _masked_var(v10, pos, m) / m + _masked_var(v01, neg, n) / n
            parts.append((v10.sum(1) / m, var, var * mask.sum(1)))
    (auc_new, var_new, unit_new), (auc_old, var_old, unit_old) = parts
    return auc_new - auc_old, var_new + var_old, unit_new + unit_old


def delong_paired(s_new, s_old, y):
    """DeLong's paired test of two scores of the same rows: difference, variances."""
    everything = np.ones_like(y, bool)
    v10n, v01n, pos, neg, m, n = _components(s_new, y, everything)
    v10o, v01o, *_ = _components(s_old, y, everything)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = (v10n - v10o).sum(1) / m
        var = _masked_var(v10n - v10o, pos, m) / m + _masked_var(v01n - v01o, neg, n) / n
    return diff, var, var * y.shape[1]


def delong_p(diff, var) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = diff / np.sqrt(var)
    return np.where(np.isfinite(z), 2 * stats.norm.sf(np.abs(z)), 1.0)


def sequential_auc_p(diff, var, unit, alpha, mixture_rows) -> np.ndarray:
    """The always-valid p of the ROC AUC difference (sequential.py, metric roc_auc)."""
    llr = sequential.log_likelihood_ratio(diff, var, unit, alpha, mixture_rows)
    return np.where(np.isfinite(var) & (var > 0), sequential.p_value(llr), 1.0)


# -- the sequential test at every peek (cumulative sums) -----------------------------------
def _cum(x: np.ndarray, peeks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.cumsum(x, 1)[:, peeks - 1], np.cumsum(x**2, 1)[:, peeks - 1]


def _var(total, squares, k):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (squares - total**2 / k) / (k - 1)


def sequential_two_sample_p(loss, arm, peeks, alpha, mixture_rows):
    """Always-valid p at each peek (sims x peeks), challenger arm vs champion arm, and
    the challenger's gain (champion − challenger mean loss)."""
    parts = []
    for mask in (arm, ~arm):
        total, squares = _cum(loss * mask, peeks)
        k = np.cumsum(mask, 1)[:, peeks - 1]
        parts.append((total / np.maximum(k, 1), _var(total, squares, k), k))
    (mean_new, var_new, k_new), (mean_old, var_old, k_old) = parts
    with np.errstate(divide="ignore", invalid="ignore"):
        v = var_new / k_new + var_old / k_old
    llr = sequential.log_likelihood_ratio(
        mean_new - mean_old, v, var_new + var_old, alpha, mixture_rows
    )
    p = np.where(np.minimum(k_new, k_old) >= 2, sequential.p_value(llr), 1.0)
    return p, mean_old - mean_new


def sequential_paired_p(d, peeks, alpha, mixture_rows) -> np.ndarray:
    total, squares = _cum(d, peeks)
    unit = _var(total, squares, peeks)
    llr = sequential.log_likelihood_ratio(total / peeks, unit / peeks, unit, alpha, mixture_rows)
    return sequential.p_value(llr)


# -- simulations ---------------------------------------------------------------------------
TESTS = ("mSPRT loss", "mSPRT ROC AUC", "DeLong")


def simulate(design, scenario, y_pool, pool, args, seed):
    """Per test and simulation: the first peek at which it decided (index, or -1) and
    whether its estimate there favoured the champion (a wrong-way decision when the
    challenger is truly better); DeLong's p at the last peek (read once)."""
    rng = np.random.default_rng(seed)
    peeks = np.arange(args.peek_every, args.max_rows + 1, args.peek_every)
    first = {t: [] for t in TESTS}
    wrong = {t: [] for t in TESTS}
    last_delong = []
    for start in range(0, args.sims, args.chunk):
        sims = min(args.chunk, args.sims - start)
        rows = rng.integers(0, len(y_pool), size=(sims, args.max_rows))
        y = y_pool[rows]
        if design == "ab":
            arm = rng.random((sims, args.max_rows)) < 0.5
            old, new = ("full", "full") if scenario == "A/A" else ("reduced", "full")
            s = np.where(arm, pool[new][rows], pool[old][rows])
            loss = sequential.row_loss(y, s, args.loss)
            p_loss, gain_loss = sequential_two_sample_p(
                loss, arm, peeks, args.alpha, args.mixture_rows
            )
            auc = [delong_unpaired(s[:, :k], y[:, :k], arm[:, :k]) for k in peeks]
            if start == 0:  # the vectorised DeLong agrees with mlfolio's
                k, a = peeks[-1], arm[0]
                ref = fixed_horizon.delong_unpaired(
                    y[0, :k][a], s[0, :k][a], y[0, :k][~a], s[0, :k][~a]
                )
                got = delong_p(auc[-1][0][:1], auc[-1][1][:1])[0]
                assert abs(ref["p_value"] - got) < 1e-9, (ref, got)
        else:
            if scenario == "A/A":  # two equally good models, which is "champion" at random
                swap = rng.random((sims, args.max_rows)) < 0.5
                a, b = pool["half_a"][rows], pool["half_b"][rows]
                s_old, s_new = np.where(swap, a, b), np.where(swap, b, a)
            else:
                s_old, s_new = pool["reduced"][rows], pool["full"][rows]
            d = sequential.row_loss(y, s_new, args.loss) - sequential.row_loss(y, s_old, args.loss)
            p_loss = sequential_paired_p(d, peeks, args.alpha, args.mixture_rows)
            gain_loss = -np.cumsum(d, 1)[:, peeks - 1]
            auc = [delong_paired(s_new[:, :k], s_old[:, :k], y[:, :k]) for k in peeks]
            if start == 0:
                k = peeks[-1]
                ref = fixed_horizon.delong_paired(y[0, :k], s_new[0, :k], s_old[0, :k])
                got = delong_p(auc[-1][0][:1], auc[-1][1][:1])[0]
                assert abs(ref["p_value"] - got) < 1e-9, (ref, got)
        diff, var, unit = (np.column_stack(part) for part in zip(*auc, strict=True))
        p_del = delong_p(diff, var)
        p_auc = sequential_auc_p(diff, var, unit, args.alpha, args.mixture_rows)
        for test, hit, gain in (
            ("mSPRT loss", p_loss <= args.alpha, gain_loss),
            ("mSPRT ROC AUC", p_auc <= args.alpha, diff),
            ("DeLong", p_del < args.alpha, diff),
        ):
            at = np.where(hit.any(1), hit.argmax(1), -1)
            first[test].append(at)
            wrong[test].append((at >= 0) & (gain[np.arange(sims), np.maximum(at, 0)] < 0))
        last_delong.append(p_del[:, -1])
    return (
        peeks,
        {t: np.concatenate(v) for t, v in first.items()},
        {t: np.concatenate(v) for t, v in wrong.items()},
        np.concatenate(last_delong),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=2000, help="simulations per design and scenario")
    ap.add_argument("--peek-every", type=int, default=100, help="labelled rows between reads")
    ap.add_argument("--max-rows", type=int, default=2000, help="labelled rows at the last read")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--loss", choices=sequential.LOSSES, default="log_loss")
    ap.add_argument("--mixture-rows", type=int, default=1000, help="monitoring.ab.mixture_rows")
    ap.add_argument("--chunk", type=int, default=250, help="simulations vectorised at once")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.max_rows < args.peek_every:
        ap.error("--max-rows must be at least --peek-every")

    started = time.perf_counter()
    load_start = os.getloadavg()
    y_pool, pool = fit_pool(args.seed)
    print(f"pool: {len(y_pool)} held-out Telco rows, churn rate {y_pool.mean():.3f}")
    for name, s in pool.items():
        auc = fixed_horizon.delong_paired(y_pool, s, pool["full"])["difference"]
        ll = sequential.row_loss(y_pool, s, args.loss).mean()
        print(f"  model {name:8s} mean {args.loss} {ll:.4f}, ROC AUC − full's {auc:+.4f}")
    print(
        f"{args.sims} simulations per row below; read every {args.peek_every} labelled rows "
        f"up to {args.max_rows}; alpha {args.alpha}; sequential tests: mixture SPRT on "
        f"{args.loss} and on ROC AUC, tuned to {args.mixture_rows} rows"
    )
    header = (
        f"{'design':7s} {'scenario':16s} {'test':24s} {'decided':>8s} {'wrong way':>9s} "
        f"{'median rows':>11s} {'read once':>9s}"
    )
    print(header)
    print("-" * len(header))
    fpr: dict[str, dict[str, float]] = {}
    labels = {
        "mSPRT loss": f"mSPRT {args.loss}",
        "mSPRT ROC AUC": "mSPRT ROC AUC",
        "DeLong": "DeLong (fixed horizon)",
    }
    for d_i, design in enumerate(("ab", "shadow")):
        for s_i, scenario in enumerate(("A/A", "true difference")):
            peeks, first, wrong, last = simulate(
                design, scenario, y_pool, pool, args, args.seed + 1 + 10 * d_i + s_i
            )
            for test in TESTS:
                decided = first[test] >= 0
                rows = np.where(decided, peeks[np.maximum(first[test], 0)], np.inf)
                median = np.median(rows)
                med = f"{median:.0f}" if np.isfinite(median) else f">{args.max_rows}"
                truth = scenario != "A/A"
                bad = f"{wrong[test].mean():.3f}" if truth else ""
                once = f"{(last < args.alpha).mean():.3f}" if test == "DeLong" else ""
                print(
                    f"{design:7s} {scenario:16s} {labels[test]:24s} {decided.mean():8.3f} "
                    f"{bad:>9s} {med if truth else '':>11s} {once:>9s}"
                )
                if not truth:
                    fpr.setdefault(test, {})[design] = float(decided.mean())
    load_end = os.getloadavg()
    print(
        f"wall {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) "
        f"at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} "
        f"({os.cpu_count()} CPUs)"
    )
    print(
        "sequential test false positive rate under peeking: "
        f"{max(max(fpr[t].values()) for t in TESTS[:2]):.3f} (fixed-horizon DeLong read "
        f"the same way: {min(fpr['DeLong'].values()):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
