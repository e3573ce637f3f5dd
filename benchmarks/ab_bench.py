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
  ``reduced``, challenger ``full``. Tests: the two-sample sequential test of the mean log
  loss; DeLong for two independent ROC curves.
* Shadow design (both variants score every row): A/A: ``half_a`` and ``half_b``, which of
  them is "champion" drawn per row at random (an exact null: the two scores are
  exchangeable); the same model on both sides would never differ at all. True difference:
  champion ``reduced``, challenger ``full``. Tests: the paired sequential test of the
  per-row log loss difference; DeLong's paired test.

Both tests are vectorised across simulations; DeLong from midranks (O(n log n) per read,
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
def _components(s: np.ndarray, y: np.ndarray, mask: np.ndarray):
    """Per-row DeLong components of the rows in ``mask``: v10 on positives, v01 on
    negatives (0 elsewhere), and the counts of positives and negatives."""
    pos, neg = mask & (y == 1), mask & (y == 0)
    rank = stats.rankdata(np.where(mask, s, np.inf), axis=1)
    rank_pos = stats.rankdata(np.where(pos, s, np.inf), axis=1)
    rank_neg = stats.rankdata(np.where(neg, s, np.inf), axis=1)
    m, n = pos.sum(1, keepdims=True), neg.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        v10 = np.where(pos, (rank - rank_pos) / n, 0.0)
        v01 = np.where(neg, 1.0 - (rank - rank_neg) / m, 0.0)
    return v10, v01, pos, neg, m[:, 0], n[:, 0]


def _masked_var(v: np.ndarray, mask: np.ndarray, k: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = v.sum(1) / k
        return ((v - mean[:, None]) ** 2 * mask).sum(1) / (k - 1)


def delong_unpaired_p(s, y, arm) -> np.ndarray:
    """p-values of DeLong's test for two independent ROC curves (arm True: challenger)."""
    aucs, variances = [], []
    for mask in (arm, ~arm):
        v10, v01, pos, neg, m, n = _components(s, y, mask)
        with np.errstate(divide="ignore", invalid="ignore"):
            aucs.append(v10.sum(1) / m)
            variances.append(_masked_var(v10, pos, m) / m + _masked_var(v01, neg, n) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (aucs[0] - aucs[1]) / np.sqrt(variances[0] + variances[1])
    return np.where(np.isfinite(z), 2 * stats.norm.sf(np.abs(z)), 1.0)


def delong_paired_p(s_new, s_old, y) -> np.ndarray:
    """p-values of DeLong's paired test of two scores of the same rows."""
    everything = np.ones_like(y, bool)
    v10n, v01n, pos, neg, m, n = _components(s_new, y, everything)
    v10o, v01o, *_ = _components(s_old, y, everything)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = (v10n - v10o).sum(1) / m
        var = _masked_var(v10n - v10o, pos, m) / m + _masked_var(v01n - v01o, neg, n) / n
        z = diff / np.sqrt(var)
    return np.where(np.isfinite(z), 2 * stats.norm.sf(np.abs(z)), 1.0)


# -- the sequential test at every peek (cumulative sums) -----------------------------------
def _cum(x: np.ndarray, peeks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.cumsum(x, 1)[:, peeks - 1], np.cumsum(x**2, 1)[:, peeks - 1]


def _var(total, squares, k):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (squares - total**2 / k) / (k - 1)


def sequential_two_sample_p(loss, arm, peeks, alpha, mixture_rows) -> np.ndarray:
    """Always-valid p at each peek (sims x peeks), challenger arm vs champion arm."""
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
    return np.where(np.minimum(k_new, k_old) >= 2, sequential.p_value(llr), 1.0)


def sequential_paired_p(d, peeks, alpha, mixture_rows) -> np.ndarray:
    total, squares = _cum(d, peeks)
    unit = _var(total, squares, peeks)
    llr = sequential.log_likelihood_ratio(total / peeks, unit / peeks, unit, alpha, mixture_rows)
    return sequential.p_value(llr)


# -- simulations ---------------------------------------------------------------------------
def simulate(design, scenario, y_pool, pool, args, seed):
    """Per simulation: the first peek at which each test decided (index, or -1) and the
    sign of its estimate there; DeLong's p at the last peek (read once)."""
    rng = np.random.default_rng(seed)
    peeks = np.arange(args.peek_every, args.max_rows + 1, args.peek_every)
    out = {t: [] for t in ("sequential", "delong")}
    signs = {t: [] for t in ("sequential", "delong")}
    last_delong = []
    checked = False
    for start in range(0, args.sims, args.chunk):
        sims = min(args.chunk, args.sims - start)
        rows = rng.integers(0, len(y_pool), size=(sims, args.max_rows))
        y = y_pool[rows]
        if design == "ab":
            arm = rng.random((sims, args.max_rows)) < 0.5
            old, new = ("full", "full") if scenario == "A/A" else ("reduced", "full")
            s = np.where(arm, pool[new][rows], pool[old][rows])
            loss = sequential.row_loss(y, s, args.loss)
            p_seq = sequential_two_sample_p(loss, arm, peeks, args.alpha, args.mixture_rows)
            p_del = np.column_stack(
                [delong_unpaired_p(s[:, :k], y[:, :k], arm[:, :k]) for k in peeks]
            )
            sign_seq = np.sign(
                np.column_stack(
                    [
                        (loss[:, :k] * arm[:, :k]).sum(1) / arm[:, :k].sum(1)
                        - (loss[:, :k] * ~arm[:, :k]).sum(1) / (~arm[:, :k]).sum(1)
                        for k in peeks
                    ]
                )
            )
            if not checked:  # the vectorised DeLong agrees with mlfolio's
                k, a = peeks[-1], arm[0]
                ref = fixed_horizon.delong_unpaired(
                    y[0, :k][a], s[0, :k][a], y[0, :k][~a], s[0, :k][~a]
                )
                assert abs(ref["p_value"] - p_del[0, -1]) < 1e-9, (ref, p_del[0, -1])
        else:
            if scenario == "A/A":
                swap = rng.random((sims, args.max_rows)) < 0.5
                a, b = pool["half_a"][rows], pool["half_b"][rows]
                s_old, s_new = np.where(swap, a, b), np.where(swap, b, a)
            else:
                s_old, s_new = pool["reduced"][rows], pool["full"][rows]
            d = sequential.row_loss(y, s_new, args.loss) - sequential.row_loss(y, s_old, args.loss)
            p_seq = sequential_paired_p(d, peeks, args.alpha, args.mixture_rows)
            p_del = np.column_stack(
                [delong_paired_p(s_new[:, :k], s_old[:, :k], y[:, :k]) for k in peeks]
            )
            sign_seq = np.sign(np.cumsum(d, 1)[:, peeks - 1])
            if not checked:
                k = peeks[-1]
                ref = fixed_horizon.delong_paired(y[0, :k], s_new[0, :k], s_old[0, :k])
                assert abs(ref["p_value"] - p_del[0, -1]) < 1e-9, (ref, p_del[0, -1])
        checked = True
        for test, p in (("sequential", p_seq <= args.alpha), ("delong", p_del < args.alpha)):
            first = np.where(p.any(1), p.argmax(1), -1)
            out[test].append(first)
            if test == "sequential":
                signs[test].append(np.where(first >= 0, sign_seq[np.arange(sims), first], 0))
        last_delong.append(p_del[:, -1])
    return (
        peeks,
        {t: np.concatenate(v) for t, v in out.items()},
        np.concatenate(signs["sequential"]),
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
        f"up to {args.max_rows}; alpha {args.alpha}; sequential test: mixture SPRT on "
        f"{args.loss}, tuned to {args.mixture_rows} rows"
    )
    header = (
        f"{'design':7s} {'scenario':16s} {'test':22s} {'decided (rate)':>14s} "
        f"{'wrong way':>9s} {'median rows':>11s} {'read once':>9s}"
    )
    print(header)
    print("-" * len(header))
    fpr: dict[str, dict[str, float]] = {}
    for d_i, design in enumerate(("ab", "shadow")):
        for s_i, scenario in enumerate(("A/A", "true difference")):
            peeks, first, signs, last = simulate(
                design, scenario, y_pool, pool, args, args.seed + 1 + 10 * d_i + s_i
            )
            for test in ("sequential", "delong"):
                decided = first[test] >= 0
                rate = decided.mean()
                rows = np.where(decided, peeks[first[test]], np.inf)
                median = np.median(rows)
                med = f"{median:.0f}" if np.isfinite(median) else f">{args.max_rows}"
                wrong = (
                    f"{(signs > 0).mean():.3f}"
                    if test == "sequential" and scenario != "A/A"
                    else ""
                )
                once = f"{(last < args.alpha).mean():.3f}" if test == "delong" else ""
                label = "mSPRT (always valid)" if test == "sequential" else "DeLong (fixed horizon)"
                print(
                    f"{design:7s} {scenario:16s} {label:22s} {rate:14.3f} {wrong:>9s} "
                    f"{med if scenario != 'A/A' else '':>11s} {once:>9s}"
                )
                if scenario == "A/A":
                    fpr.setdefault(test, {})[design] = float(rate)
    load_end = os.getloadavg()
    print(
        f"wall {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) "
        f"at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} "
        f"({os.cpu_count()} CPUs)"
    )
    print(
        "sequential test false positive rate under peeking: "
        f"{max(fpr['sequential'].values()):.3f} (fixed-horizon DeLong read the same way: "
        f"{min(fpr['delong'].values()):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
