"""Drift verdict at scale: mlfolio.monitor.drift_verdict against Evidently 0.7's Report.

Builds seeded reference and current frames (default 1,000,000 rows x 20 columns: 8 numeric,
12 categorical; 3 numeric and 2 categorical columns drifted, one more numeric column
shifted too little to count), times each method in its own subprocess (so peak memory,
``ru_maxrss``, is that method's alone), checks that the per-column verdicts agree and
prints a table.

    .venv/bin/python benchmarks/drift_bench.py               # 1M rows (Evidently ~1 min)
    .venv/bin/python benchmarks/drift_bench.py --rows 50000  # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from mlfolio.config import SchemaConfig

NUMERIC = [f"num_{i}" for i in range(8)]
CATEGORICAL = [f"cat_{i}" for i in range(12)]
SCHEMA = SchemaConfig(
    target="y", positive_label=1, negative_label=0, numeric=NUMERIC, categorical=CATEGORICAL
)
EXPECTED_DRIFT = ["num_0", "num_3", "num_6", "cat_2", "cat_7"]


def make_frame(rows: int, seed: int, drifted: bool) -> pd.DataFrame:
    """Seeded frame; ``drifted=True`` shifts the columns listed in EXPECTED_DRIFT."""
    rng = np.random.default_rng(seed)
    d = drifted
    cols: dict[str, object] = {
        "num_0": rng.normal(50 + (15 if d else 0), 10, rows),  # mean shift
        "num_1": rng.lognormal(3, 0.8, rows),
        "num_2": rng.integers(0, 73, rows).astype(float),  # tenure-like ints
        "num_3": rng.gamma(2.0, 30 * (1.4 if d else 1.0), rows),  # scale change
        "num_4": rng.uniform(0, 1 + (0.03 if d else 0), rows),  # too small to count
        "num_5": rng.integers(0, 4, rows).astype(float),  # 4 values: JS test
        "num_6": rng.normal(0, 1 * (2.0 if d else 1.0), rows),  # variance change
        "num_7": np.round(rng.exponential(20, rows), 2),
    }
    cols["num_1"][rng.random(rows) < 0.01] = np.nan  # some missing values
    for i in range(12):
        k = [2, 3, 4, 5, 8, 12, 20, 50, 3, 6, 100, 2][i]
        levels = np.array([f"c{i}_v{j}" for j in range(k)], dtype=object)
        p = np.linspace(1, 2, k)
        if d and f"cat_{i}" in EXPECTED_DRIFT:
            p = p[::-1] ** 3
        cols[f"cat_{i}"] = rng.choice(levels, size=rows, p=p / p.sum())
    return pd.DataFrame(cols)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(method: str, rows: int, seed: int) -> dict[str, object]:
    from mlfolio import monitor

    reference = make_frame(rows, seed, drifted=False)
    current = make_frame(rows, seed + 1, drifted=True)
    if method == "evidently":
        import evidently.presets  # noqa: F401  (the ~5 s import is not timed)
    base = _maxrss_mb()
    func = monitor.drift_verdict if method == "ours" else monitor.evidently_verdict
    start = time.perf_counter()
    verdict = func(reference, current, SCHEMA)
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "seconds": seconds,
        "rss_before_mb": base,
        "peak_rss_mb": _maxrss_mb(),
        "drifted": {c: bool(r["drifted"]) for c, r in verdict["columns"].items()},
        "scores": {c: float(r["score"]) for c, r in verdict["columns"].items()},
        "share": verdict["share_drifted"],
        "dataset_drift": verdict["dataset_drift"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in each frame")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--child", choices=["ours", "evidently"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.rows, args.seed)))
        return
    results = {}
    for method in ["ours"] + ([] if args.skip_evidently else ["evidently"]):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                method,
                "--rows",
                str(args.rows),
                "--seed",
                str(args.seed),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    ours = results["ours"]
    print(
        f"{args.rows:,} x 20 reference vs {args.rows:,} x 20 current "
        f"(8 numeric, 12 categorical; drifted by construction: {EXPECTED_DRIFT})\n"
    )
    print(
        f"{'method':<22}{'seconds':>9}{'peak RSS MB':>13}{'+MB':>8}  "
        f"{'dataset':>8}  drifted columns  agree?"
    )
    for method, r in results.items():
        drifted = [c for c, v in r["drifted"].items() if v]
        agree = r["drifted"] == ours["drifted"] and r["dataset_drift"] == ours["dataset_drift"]
        name = {"ours": "mlfolio drift_verdict", "evidently": "Evidently Report"}[method]
        print(
            f"{name:<22}{r['seconds']:>9.2f}{r['peak_rss_mb']:>13.0f}"
            f"{r['peak_rss_mb'] - r['rss_before_mb']:>8.0f}  "
            f"{str(r['dataset_drift']):>8}  {','.join(drifted)}  {'yes' if agree else 'NO'}"
        )
    if "evidently" in results:
        ev = results["evidently"]
        worst = max(abs(ours["scores"][c] - ev["scores"][c]) for c in ours["scores"])
        print(
            f"\nours / Evidently time: {ours['seconds'] / ev['seconds']:.1%}; "
            f"largest score difference: {worst:.2e}"
        )
    found = sorted(c for c, v in ours["drifted"].items() if v)
    print(f"expected drift found by ours: {found == sorted(EXPECTED_DRIFT)}")


if __name__ == "__main__":
    main()
