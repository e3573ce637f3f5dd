"""Label-free performance estimation (mlfolio.estimate, CBPE) against realised metrics.

The Telco churn file is split ``--splits`` times (seeded; train / valid / held-out, the
held-out share ``--test-size``); per split a model is fitted on train and calibrated on
valid (:func:`mlfolio.estimate.fit_calibration`, as the evaluate stage does), so the
calibration sample's luck averages out. Each covariate-shift scenario draws ``--rows`` of
a split's held-out rows without replacement, with probabilities reweighted by tenure, monthly
charges, contract, internet service and payment method at random strengths (outcomes
kept, so P(y | x) is unchanged and the realised metrics are known). Per scenario: the
realised ROC AUC, the CBPE estimate and its interval, and the obvious alternative, the
reference ROC AUC carried forward ("no estimate": what a monitor without labels knows).
A concept-shift scenario (the outcomes of one segment flipped: P(y | x) changes) is
reported apart: the estimate cannot see it; the realised-vs-estimated check flags it.

    .venv/bin/python benchmarks/estimate_bench.py                 # 100 scenarios, xgboost
    .venv/bin/python benchmarks/estimate_bench.py --scenarios 50 --model logreg

The last line reads "label-free ROC AUC: median abs error X over N scenarios, interval
coverage Y%" (goal: X <= 0.02, Y >= 90%).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from mlfolio import config, data, estimate, evaluate, features, train

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "parameters" / "churn.yaml"
SHIFT_COLUMNS = ("tenure", "monthlycharges", "contract", "internetservice", "paymentmethod")


def telco(kind: str, split_seed: int | None = None, test_size: float = 0.2):
    """The split as the pipeline makes it (``split_seed``: a seeded split instead of the
    id hash; ``test_size``: the held-out share) and a model of ``kind`` fitted on its
    train rows."""
    cfg = config.load(
        PARAMS,
        {"data.uri": str(ROOT / "data" / "telco_churn.csv"), "split.test_size": test_size},
    )
    churn = data.validate(data.load_source(cfg.data), cfg.schema)
    if split_seed is None:
        parts = features.split(churn, cfg.schema, cfg.split, cfg.seed)
    else:
        seeded = cfg.split.model_copy(update={"method": "seeded"})
        parts = features.split(churn, cfg.schema, seeded, split_seed)
    params = getattr(cfg.training, kind)
    model = train.fit(cfg.schema, kind, params, parts["train"], cfg.seed, cfg.features)
    return cfg, parts, model


def shift_weights(pool: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Sampling weights of a random covariate shift and its strength: log w is a sum of
    random coefficients on the standardised numeric columns and on each category."""
    strength = float(rng.uniform(0.3, 1.5))
    log_w = np.zeros(len(pool))
    for col in SHIFT_COLUMNS:
        values = pool[col]
        if pd.api.types.is_numeric_dtype(values):
            z = (values - values.mean()) / values.std()
            log_w += rng.normal(0, strength) * z.fillna(0).to_numpy()
        else:
            levels = values.astype(str)
            coef = {v: rng.normal(0, strength) for v in sorted(levels.unique())}
            log_w += levels.map(coef).to_numpy(dtype=float)
    w = np.exp(log_w - log_w.max())
    return w / w.sum(), strength


def scenario(
    y: np.ndarray,
    score: np.ndarray,
    cal: estimate.Calibration,
    threshold: float,
    reference_auc: float,
    draws: int,
    seed: int,
) -> dict[str, float]:
    est = estimate.estimate_performance(score, cal, threshold, draws=draws, seed=seed)
    realised = evaluate.classification_metrics(y, score, threshold)
    lo, hi = est["roc_auc_ci"]
    return {
        "rows": len(y),
        "positive_rate": float(y.mean()),
        "realised": realised["roc_auc"],
        "cbpe": est["roc_auc"],
        "ci_low": lo,
        "ci_high": hi,
        "covered": lo <= realised["roc_auc"] <= hi,
        "cbpe_err": est["roc_auc"] - realised["roc_auc"],
        "no_estimate_err": reference_auc - realised["roc_auc"],
        "cbpe_acc_err": est["accuracy"] - realised["accuracy"],
        "cbpe_f1_err": (est["f1"] or 0) - (realised["f1"] or 0),
        "compare": estimate.compare_with_realised(est, realised, len(y)),
    }


class Split:
    """One split of the file: its model's scores on the held-out pool, the calibration
    fitted on its validation rows, the threshold and the reference ROC AUC."""

    def __init__(self, kind: str, split_seed: int | None, test_size: float, method: str) -> None:
        cfg, parts, model = telco(kind, split_seed, test_size)
        schema = cfg.schema
        y_valid = data.target_vector(parts["valid"], schema).to_numpy()
        valid_score = train.predict_scores(model, parts["valid"], schema)
        self.threshold = evaluate.max_f1_threshold(y_valid, valid_score)
        t0 = time.perf_counter()
        self.cal = estimate.fit_calibration(y_valid, valid_score, method, seed=cfg.seed)
        self.fit_seconds = time.perf_counter() - t0
        self.pool = parts["test"].reset_index(drop=True)
        self.y = data.target_vector(self.pool, schema).to_numpy()
        self.score = train.predict_scores(model, self.pool, schema)
        self.reference_auc = float(skm.roc_auc_score(self.y, self.score))
        self.train_rows, self.valid_rows = len(parts["train"]), len(y_valid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", type=int, default=100, help="covariate-shift scenarios")
    ap.add_argument(
        "--splits",
        type=int,
        default=5,
        help="train/valid/test splits the scenarios spread over (each: a model fitted, "
        "calibrated on its own validation rows); 1 = the pipeline's id-hash split",
    )
    ap.add_argument("--rows", type=int, default=800, help="held-out rows drawn per scenario")
    ap.add_argument(
        "--test-size", type=float, default=0.3, help="held-out share of the file (the pool)"
    )
    ap.add_argument("--calibration", choices=estimate.CALIBRATION_METHODS, default="auto")
    ap.add_argument("--model", choices=train.MODEL_KINDS, default="xgboost")
    ap.add_argument("--draws", type=int, default=1000, help="Monte Carlo draws per estimate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=12, help="scenario rows printed")
    args = ap.parse_args()

    start = time.perf_counter()
    splits = [
        Split(args.model, None if args.splits == 1 else k, args.test_size, args.calibration)
        for k in range(args.splits)
    ]
    for k, sp in enumerate(splits):
        print(
            f"split {k}: {args.model} fitted on {sp.train_rows} rows; calibration "
            f"{sp.cal.reason}; ECE on its {sp.valid_rows} rows {sp.cal.quality['ece']:.4f} "
            f"(raw {sp.cal.quality['raw_ece']:.4f}); threshold {sp.threshold:.3f}; held-out "
            f"pool {len(sp.pool)} rows, reference ROC AUC {sp.reference_auc:.4f}"
        )
    rng = np.random.default_rng(args.seed)
    results, t_est = [], 0.0
    for i in range(args.scenarios):
        sp = splits[i % len(splits)]
        rows = min(args.rows, len(sp.pool) * 2 // 3)
        w, strength = shift_weights(sp.pool, rng)
        picked = rng.choice(len(sp.pool), size=rows, replace=False, p=w)
        t0 = time.perf_counter()
        r = scenario(
            sp.y[picked], sp.score[picked], sp.cal, sp.threshold, sp.reference_auc, args.draws, i
        )
        t_est += time.perf_counter() - t0
        r.update(
            scenario=i,
            split=i % len(splits),
            strength=strength,
            tenure=float(sp.pool["tenure"].iloc[picked].mean()),
        )
        results.append(r)
    table = pd.DataFrame(results).set_index("scenario")
    pd.set_option("display.width", 200)
    cols = ["split", "strength", "tenure", "positive_rate", "realised", "cbpe", "ci_low"]
    print(f"\ncovariate-shift scenarios (first {args.show} of {len(table)}):")
    print(
        table[[*cols, "ci_high", "covered", "cbpe_err", "no_estimate_err"]].head(args.show).round(4)
    )

    def stats(err: pd.Series) -> list[float]:
        a = err.abs()
        return [a.median(), a.quantile(0.9), a.max(), err.mean()]

    moved = table[table["no_estimate_err"].abs() >= 0.02]  # shifts that moved ROC AUC
    summary = pd.DataFrame(
        [
            [*stats(table["cbpe_err"]), table["covered"].mean(), len(table)],
            [*stats(table["no_estimate_err"]), np.nan, len(table)],
            [*stats(moved["cbpe_err"]), moved["covered"].mean(), len(moved)],
            [*stats(moved["no_estimate_err"]), np.nan, len(moved)],
        ],
        columns=["median |err|", "p90 |err|", "max |err|", "bias", "coverage", "scenarios"],
        index=[
            "CBPE (mlfolio.estimate)",
            "reference carried forward",
            "CBPE, where ROC AUC moved >= 0.02",
            "carried forward, same scenarios",
        ],
    )
    print(
        f"\nROC AUC over {len(table)} covariate-shift scenarios (realised "
        f"{table['realised'].min():.3f} - {table['realised'].max():.3f}; realised minus "
        f"reference {(-table['no_estimate_err']).min():+.3f} to "
        f"{(-table['no_estimate_err']).max():+.3f}):"
    )
    print(summary.round(4).to_string())
    false_alarms = np.mean([r["compare"]["concept_shift_suspected"] for r in results])
    print(
        f"CBPE accuracy median |err| {table['cbpe_acc_err'].abs().median():.4f}, F1 median "
        f"|err| {table['cbpe_f1_err'].abs().median():.4f}; flagged as concept shift (false "
        f"alarms): {false_alarms:.1%}"
    )

    # concept shift: one segment's outcomes flipped; features (so scores) untouched
    sp = splits[0]
    rows = min(args.rows, len(sp.pool) * 2 // 3)
    segment = (sp.pool["contract"].astype(str) == "Month-to-month") & (sp.pool["tenure"] < 24)
    y_flipped = np.where(segment, 1 - sp.y, sp.y)
    picked = np.random.default_rng(args.seed + 1).choice(len(sp.pool), size=rows, replace=False)
    cs = scenario(
        y_flipped[picked],
        sp.score[picked],
        sp.cal,
        sp.threshold,
        sp.reference_auc,
        args.draws,
        99_999,
    )
    flagged = cs["compare"]
    print(
        f"\nconcept shift (apart; outcomes flipped for month-to-month customers with tenure "
        f"< 24, {int(segment[picked].sum())} of {rows} rows): realised ROC AUC "
        f"{cs['realised']:.4f}, CBPE {cs['cbpe']:.4f} [{cs['ci_low']:.4f}, {cs['ci_high']:.4f}]"
        f" (error {cs['cbpe_err']:+.4f}), reference carried forward {sp.reference_auc:.4f}; "
        f"flagged once labels come: {flagged['concept_shift_suspected']} (outside the "
        f"interval: {', '.join(flagged['outside_interval']) or 'none'})"
    )
    load = os.getloadavg()
    fit_ms = np.mean([sp.fit_seconds for sp in splits]) * 1000
    print(
        f"\ntimes: calibration fit {fit_ms:.0f} ms, estimate {t_est / len(table) * 1000:.0f} ms "
        f"per scenario ({args.draws} draws x {args.rows} rows), total "
        f"{time.perf_counter() - start:.1f} s; load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"label-free ROC AUC: median abs error {table['cbpe_err'].abs().median():.4f} over "
        f"{len(table)} scenarios, interval coverage {table['covered'].mean():.0%}"
    )


if __name__ == "__main__":
    main()
