"""What threads buy an XGBoost fit here: the pipeline's model on the Telco rows resampled.

For each row count, the default experiment's XGBoost model (parameters/churn.yaml's
parameters, CPU ``hist``) is fitted on the pipeline's features with one thread, then with
every core the process may use: with OpenMP's idle threads spinning (its default) and
sleeping (``OMP_WAIT_POLICY=PASSIVE``, what stage kernels get). Each fit runs on an
otherwise idle machine and again beside one busy process (a Python loop, the kind of
neighbour a second tuning worker or a test process is). Each configuration runs in its own
process (OpenMP reads the policy once, as it loads). Prints wall seconds, the speed-up
over one thread, and whether every fit's trees equal the one-thread fit's.

    .venv/bin/python benchmarks/xgboost_threads.py                       # 16k, 200k, 1M rows
    .venv/bin/python benchmarks/xgboost_threads.py --rows 2000000 --rounds 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETUPS = (  # (label, threads: 0 = every core, OMP_WAIT_POLICY or None)
    ("1 thread", 1, None),
    ("all cores, spinning", 0, None),
    ("all cores, sleeping", 0, "PASSIVE"),
)


def child(rows: int, rounds: int, threads: int, data_dir: Path) -> None:
    """One fit in this process; prints a JSON line: wall seconds, trees' digest."""
    import resample  # benchmarks/resample.py

    from mlfolio import config, data, features, train

    cfg = config.load(ROOT / "parameters" / "churn.yaml")
    df = data.load_source(
        cfg.data.model_copy(update={"uri": str(resample.write(rows, 0, data_dir))}),
        columns=data.schema_columns(cfg.schema),
    )
    X = features.build_preprocessor(cfg.schema, cfg.features).fit_transform(df)
    y = data.target_vector(df, cfg.schema)
    params = {**cfg.training.xgboost, "n_estimators": rounds}
    model = train.make_estimator("xgboost", params, cfg.seed)
    model.set_params(n_jobs=threads or len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    model.fit(X, y)
    wall = time.perf_counter() - start
    trees = "\n".join(model.get_booster().get_dump()).encode()
    print(json.dumps({"wall": wall, "trees": hashlib.sha256(trees).hexdigest()}))


def measure(rows: int, rounds: int, threads: int, policy: str | None, data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(rows), str(rounds), str(threads), str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16000,200000,1000000", help="comma separated")
    parser.add_argument("--rounds", type=int, default=300, help="boosting rounds per fit")
    parser.add_argument("--data-dir", default=None, help="where resampled files are cached")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rows, rounds, threads, folder = args.child
        child(int(rows), int(rounds), int(threads), Path(folder))
        return

    import tempfile

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="mlfolio-xgb-"))
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores; load average {os.getloadavg()[0]:.2f} at the start")
    print(f"model: parameters/churn.yaml's xgboost with {args.rounds} rounds\n")
    header = f"| {'rows':>9} | {'neighbour':<9} | {'setup':<20} | {'wall s':>7} | {'vs 1':>5} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    same = True
    for rows in (int(r) for r in args.rows.split(",")):
        for neighbour in ("none", "1 busy"):
            busy = None
            if neighbour != "none":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                base = None
                for label, threads, policy in SETUPS:
                    got = measure(rows, args.rounds, threads, policy, data_dir)
                    base = base or got
                    same &= got["trees"] == base["trees"]
                    ratio = base["wall"] / got["wall"]
                    print(
                        f"| {rows:>9,} | {neighbour:<9} | {label:<20} | {got['wall']:>7.2f} "
                        f"| {ratio:>4.2f}x |",
                        flush=True,
                    )
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    print(f"trees equal to the 1-thread fit's in every setup: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
