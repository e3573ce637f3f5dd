"""Tune stage vs scikit-learn's RandomizedSearchCV: time to reach the same CV ROC AUC.

Usage (from the project root)::

    .venv/bin/python benchmarks/tune_bench.py              # 50 trials, 3 folds: ~2 min
    .venv/bin/python benchmarks/tune_bench.py --repeats 3  # seeds 42, 43, 44: ~6 min
    .venv/bin/python benchmarks/tune_bench.py --quick      # smoke run, ~10 s
    .venv/bin/python benchmarks/tune_bench.py --no-postgres  # journal rows only

(on 2 idle cores; other work on the machine slows every row, the parallel one most)

Everything runs in one process, on the same data, train split, search space, folds and
trial budget:

* ``RandomizedSearchCV`` over the full servable pipeline (feature transformer + XGBoost),
  ``n_jobs=1``: the transformer is refitted per candidate and fold, as the pipeline
  demands. Its clock is the cumulative per-candidate fit + score time from
  ``cv_results_`` (with ``n_jobs=1`` candidates are evaluated one after another, all
  folds of a candidate together), which leaves out the search's own overhead: a lower
  bound on its real wall time, i.e. it favours RandomizedSearchCV. The row
  "RandomizedSearchCV, ideal 2 cores" halves those times: what perfect 2-process scaling
  would give, for a fair comparison with the 2-worker tune (it is derived, not run).
* ``mlfolio.tune.run_study`` with TPE (no pruner, 1 worker), TPE + median pruner over
  folds (1 worker), and TPE + pruner with ``--workers`` workers (this process and
  ``--workers - 1`` child processes) on a journal file. Its clock starts before
  ``run_study`` (so it includes building the folds and opening the study) and each
  trial's time is its ``datetime_complete``. The worker processes' fork server is
  started before the first clock (a notebook kernel pays its few seconds once).
* the same TPE + pruner with the study in PostgreSQL (``tuning.storage``, heartbeats on,
  as a shared study runs) with 1 and ``--workers`` workers: what sharing a study costs
  next to the journal file. The benchmark creates its own database on ``--postgres``
  (a server URL; default the local one) and drops it at the end.

The target is RandomizedSearchCV's final best CV AUC minus 0.001 ("the same CV AUC
within 0.001"); a method's time to target is when the first of its complete trials reaches
it. XGBoost runs with ``n_jobs=1`` everywhere (on 2 cores OpenMP's busy-wait stalls it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import scipy
import sklearn
import xgboost
from scipy.stats import loguniform, randint, uniform
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold

from mlfolio import config, data, features, train, tune
from mlfolio.config import TuningConfig

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.001


@dataclass
class Result:
    method: str
    cores: int
    trials: str
    wall: float
    n_trials: int
    best: float
    curve: list[tuple[float, float]]  # (seconds since start, value of that complete trial)

    def time_to(self, target: float) -> float | None:
        return next((t for t, v in sorted(self.curve) if v >= target), None)


def xgboost_distributions() -> dict[str, object]:
    """scipy equivalents of ``mlfolio.tune.suggest_params(trial, "xgboost")``."""
    return {
        "model__n_estimators": list(range(50, 501, 25)),  # suggest_int(50, 500, step=25)
        "model__learning_rate": loguniform(0.01, 0.3),
        "model__max_depth": randint(2, 8),  # 2..7 inclusive
        "model__min_child_weight": loguniform(1.0, 20.0),
        "model__subsample": uniform(0.5, 0.5),  # [0.5, 1.0]
        "model__colsample_bytree": uniform(0.4, 0.6),  # [0.4, 1.0]
        "model__reg_lambda": loguniform(1e-3, 10.0),
    }


def run_random_search(
    cfg: config.Config, train_df, n_trials: int, n_folds: int, seed: int
) -> tuple[Result, dict[str, object]]:
    X, y = features.xy(train_df, cfg.schema)
    pipe = features.build_model_pipeline(cfg.schema, train.make_estimator("xgboost", {}, seed))
    search = RandomizedSearchCV(
        pipe,
        xgboost_distributions(),
        n_iter=n_trials,
        scoring="roc_auc",
        cv=StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed),
        n_jobs=1,
        refit=False,
        random_state=seed,
        error_score="raise",
    )
    start = time.perf_counter()
    search.fit(X, y)
    wall = time.perf_counter() - start
    res = search.cv_results_
    per_candidate = n_folds * (res["mean_fit_time"] + res["mean_score_time"])
    clock = np.cumsum(per_candidate)
    curve = [(float(t), float(v)) for t, v in zip(clock, res["mean_test_score"], strict=True)]
    best = int(np.argmax(res["mean_test_score"]))
    params = {k.removeprefix("model__"): v for k, v in res["params"][best].items()}
    return Result(
        "RandomizedSearchCV n_jobs=1",
        1,
        str(n_trials),
        wall,
        n_trials,
        float(res["mean_test_score"][best]),
        curve,
    ), params


def run_tune(
    label: str, cfg: config.Config, train_df, tuning: TuningConfig, seed: int, workdir: Path
) -> Result:
    run_dir = workdir / label.replace(" ", "_").replace("+", "")
    start_dt = datetime.now()
    start = time.perf_counter()
    study_name = f"bench-{label}-{seed}".replace(" ", "_")  # one database, many studies
    study = tune.run_study(tuning, train_df, cfg.schema, seed, run_dir, study_name)
    wall = time.perf_counter() - start
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    curve = [((t.datetime_complete - start_dt).total_seconds(), float(t.value)) for t in complete]
    trials = f"{len(complete) + pruned}" + (f" ({pruned} pruned)" if pruned else "")
    n_done = len(complete) + pruned
    return Result(label, tuning.n_workers, trials, wall, n_done, study.best_value, curve)


def create_database(server_url: str) -> str:
    """A fresh database on the server of ``server_url``; returns its URL."""
    import secrets

    import sqlalchemy

    name = f"mlfolio_tune_bench_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = sqlalchemy.engine.make_url(server_url).set(database=name)
    print(f"PostgreSQL rows: database {name} on {tune.masked(server_url)} (dropped at the end)")
    return url.render_as_string(hide_password=False)


def drop_database(server_url: str, db_url: str) -> None:
    import sqlalchemy

    name = sqlalchemy.engine.make_url(db_url).database
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def fmt_time(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def run_once(
    cfg: config.Config, train_df, args: argparse.Namespace, seed: int, tmp: Path
) -> tuple[list[Result], float]:
    """All methods with one seed; returns the results and the target AUC."""
    results: list[Result] = []
    # The fork server the worker processes start from boots once per process (seconds:
    # it imports xgboost and mlfolio); boot it before any clock so that the first
    # multi-worker row does not pay it alone.
    tune.workers._start_process_server()
    rs, rs_params = run_random_search(cfg, train_df, args.trials, args.folds, seed)
    results.append(rs)
    print(
        f"  RandomizedSearchCV: {rs.wall:.1f} s wall, "
        f"{rs.curve[-1][0]:.1f} s fit+score, best {rs.best:.4f}",
        flush=True,
    )
    results.append(
        Result(
            "RandomizedSearchCV, ideal 2 cores (derived)",
            2,
            rs.trials,
            rs.curve[-1][0] / 2,
            rs.n_trials,
            rs.best,
            [(t / 2, v) for t, v in rs.curve],
        )
    )

    base = dict(model="xgboost", n_trials=args.trials, timeout=None, cv_folds=args.folds)
    configs = [
        ("tune TPE", TuningConfig(**base, pruner="none", n_workers=1)),
        ("tune TPE + median pruner", TuningConfig(**base, pruner="median", n_workers=1)),
        (
            f"tune TPE + pruner, {args.workers} workers",
            TuningConfig(**base, pruner="median", n_workers=args.workers),
        ),
    ]
    if args.postgres_db:
        pg = dict(base, pruner="median", storage=args.postgres_db)
        configs += [
            ("tune TPE + pruner, PostgreSQL, 1 worker", TuningConfig(**pg, n_workers=1)),
            (
                f"tune TPE + pruner, PostgreSQL, {args.workers} workers",
                TuningConfig(**pg, n_workers=args.workers),
            ),
        ]
    for label, tuning in configs:
        result = run_tune(label, cfg, train_df, tuning, seed, tmp / f"seed{seed}")
        results.append(result)
        print(f"  {label}: {result.wall:.1f} s wall, best {result.best:.4f}", flush=True)

    # Same folds, same preprocessing, same definition: RandomizedSearchCV's best
    # candidate scored by mlfolio's objective must give the same CV AUC.
    folds = tune.Folds.build(train_df, cfg.schema, args.folds, seed)
    rescored = tune.make_objective(folds, "xgboost", seed, prune=False)(
        optuna.trial.FixedTrial(rs_params)
    )
    target = rs.best - TOLERANCE
    print(
        f"  check: RandomizedSearchCV's best params under mlfolio's objective: "
        f"{rescored:.6f} (RandomizedSearchCV: {rs.best:.6f})"
    )
    print(
        f"  target CV ROC AUC = RandomizedSearchCV best {rs.best:.4f} - {TOLERANCE} "
        f"= {target:.4f}\n"
    )
    return results, target


def print_table(results: list[Result], target: float) -> list[float | None]:
    """The table of one seed; returns each method's speed-up to target (None: not
    reached)."""
    rs_time = results[0].time_to(target)
    header = (
        f"{'method':<44} {'cores':>5} {'trials':>15} {'total s':>8} {'trials/s':>8} "
        f"{'best AUC':>9} {'to target s':>12} {'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    speedups: list[float | None] = []
    for r in results:
        reached = r.time_to(target)
        speedup = rs_time / reached if reached and rs_time else None
        speedups.append(speedup)
        print(
            f"{r.method:<44} {r.cores:>5} {r.trials:>15} {r.wall:>8.1f} "
            f"{r.n_trials / r.wall:>8.2f} {r.best:>9.4f} "
            f"{fmt_time(reached):>12} {f'{speedup:.1f}x' if speedup else '-':>9}"
        )
    return speedups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the folds, samplers and models (default: the "
        "parameter file's); the train split always uses the file's",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat everything with seeds seed, seed+1, ... (time to "
        "target depends on the luck of the first trials)",
    )
    parser.add_argument("--params", default=str(ROOT / "parameters" / "churn.yaml"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 trials, 2 folds")
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        metavar="URL",
        help="a PostgreSQL server (any database on it) where the benchmark creates, and "
        "then drops, its own database for the PostgreSQL rows",
    )
    parser.add_argument("--no-postgres", action="store_true", help="journal rows only")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.folds = 6, 2

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = config.load(args.params)
    seed = cfg.seed if args.seed is None else args.seed
    raw = data.load_source(cfg.data)
    df = data.validate(raw, cfg.schema, source=cfg.data.uri)
    train_df = features.split(df, cfg.schema, cfg.split, cfg.seed)["train"]

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(
        f"machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"usable cores={affinity}, load average {load_average()}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"optuna {optuna.__version__}, xgboost {xgboost.__version__}, "
        f"scikit-learn {sklearn.__version__}, scipy {scipy.__version__}"
    )
    print(
        f"data: {cfg.data.uri} ({len(df)} rows), train split {len(train_df)} rows; "
        f"{args.trials} trials, {args.folds}-fold stratified CV"
    )
    print(
        f"RandomizedSearchCV runs with n_jobs=1 on this {os.cpu_count()}-core machine "
        f"(xgboost n_jobs=1 everywhere); the tune worker row uses {args.workers} "
        "processes, so compare it with the 'ideal 2 cores' row too."
    )

    t0 = time.perf_counter()
    args.postgres_db = None if args.no_postgres else create_database(args.postgres)
    all_speedups: list[list[float | None]] = []
    all_walls: list[list[float]] = []
    methods: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
            for rep in range(args.repeats):
                print(f"\nseed {seed + rep}:")
                results, target = run_once(cfg, train_df, args, seed + rep, Path(tmp))
                all_speedups.append(print_table(results, target))
                all_walls.append([r.wall for r in results])
                methods = [r.method for r in results]
    finally:
        if args.postgres_db:
            drop_database(args.postgres, args.postgres_db)
    total = time.perf_counter() - t0

    if args.repeats > 1:
        print(
            f"\nover {args.repeats} seeds: median speed-up to target (reached in k of n: "
            "each seed's speed-up), and median total wall time for all trials"
        )
        for i, method in enumerate(methods):
            got = [s[i] for s in all_speedups if s[i] is not None]
            median = f"{float(np.median(got)):.1f}x" if got else "-"
            walls = [w[i] for w in all_walls]
            rs_walls = [w[0] for w in all_walls]
            print(
                f"  {method:<44} {median:>6} ({len(got)}/{args.repeats}: "
                + " ".join(f"{x:.1f}" for x in got)
                + ")"
                + f"   total {float(np.median(walls)):5.1f} s "
                f"({float(np.median(rs_walls)) / float(np.median(walls)):.1f}x)"
            )
    print(
        "\nspeed-up = RandomizedSearchCV n_jobs=1 time to target / the method's. "
        "RandomizedSearchCV times are its summed fit+score times (a lower bound).\n"
        "Time to target hangs on when a lucky trial comes (the AUC surface is flat near "
        "the top): one seed says little, use --repeats."
    )
    print(
        f"benchmark wall time: {total:.0f} s; load average now {load_average()} "
        "(above ~0.2 at the start, other processes shared the cores)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
