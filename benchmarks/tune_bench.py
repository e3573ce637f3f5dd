"""Tune stage vs scikit-learn's RandomizedSearchCV (n_jobs=2): time to reach the same CV
ROC AUC, on the default data resampled to any number of rows.

Usage (from the project root)::

    .venv/bin/python benchmarks/tune_bench.py --rows 40000 --repeats 3   # ~3 min at load ~1.5
    .venv/bin/python benchmarks/tune_bench.py --rows 4000 --repeats 1    # one seed
    .venv/bin/python benchmarks/tune_bench.py --quick                    # smoke run, ~15 s
    .venv/bin/python benchmarks/tune_bench.py --tuning subsample_rows=10000  # an option

What runs, per repeat (seed = ``--seed`` + repeat, default the parameter file's):

* data: ``data/telco_churn.csv`` resampled to ``--rows`` rows with that seed
  (``benchmarks/resample.py``: stratified on churn, jittered numbers), validated and split
  train/valid/test as the preprocess stage does (``features.split``, the file's split
  sizes and seed); both tuners see the same training rows.
* the rival: ``RandomizedSearchCV(n_jobs=2)`` over the full servable pipeline (feature
  transformer + ``XGBClassifier(n_jobs=1)``, the transformer refitted per candidate and
  fold, as a pipeline search does), the same space as ``mlfolio.tune.suggest_params``
  (scipy distributions), the same ``StratifiedKFold`` folds and the same number of
  candidates. Its clock is real wall time from ``fit`` to its return; a scorer wrapper
  appends each fold's score with a timestamp to a file, and a candidate has finished when
  the last of its folds was scored. Its process pool is started before the clock (a
  favour to the rival: the first call in a session pays a few seconds more).
* mlfolio: ``mlfolio.tune.run_study``, the function the tune stage calls, with the
  parameter file's ``tuning`` section as the stage runs it (median pruner on boosting
  rounds, early stopping, ``tuning.subsample_rows``, ``n_workers`` and ``fold_threads`` (a
  trial's folds boosting side by side in threads) as set there; the table header prints
  them) except ``n_trials`` (``--trials``, the same budget as the
  rival's) and ``timeout`` (none, so the budgets stay equal). Its clock starts before
  ``run_study`` (building the folds and opening the study are included) and a trial has
  finished at its ``datetime_complete``. There is no registry, so no champion: with
  ``tuning.warm_start`` on (the default) the study's first trial is the train stage's
  model (``training.xgboost``), as on a project's first run; ``--tuning warm_start=false``
  starts from TPE's random start-up trials alone.

Comparable AUCs: a trial's own value is the CV AUC of the rounds early stopping chose on
the validation fold itself (slightly optimistic), on the sample when
``tuning.subsample_rows`` applies. So every trial that became mlfolio's best so far is
re-scored (outside its clock) as the model the stage would refit: its parameters with
``n_estimators`` = the rounds early stopping recorded, fitted on the same full-row folds as
the rival's, no early stopping. mlfolio reaches the target when such a best-so-far trial's
re-scored CV AUC is at least the target; "best AUC" columns are re-scored values.

The target is the rival's best CV AUC minus 0.001. Per seed: each one's time to target,
the speed-up (rival's / mlfolio's; 0 when mlfolio never reached it), the best CV AUC of
each at mlfolio's finishing time (equal wall time) and at the end. The last line is the
median speed-up over the seeds. XGBoost has n_jobs=1 everywhere (on 2 cores OpenMP's
busy-wait stalls it). The load average is printed at the start and the end: on a busy
machine every figure moves, the rival's (2 processes) most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import sklearn
import xgboost
from scipy.stats import loguniform, randint, uniform
from sklearn.metrics import get_scorer
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resample import resample  # noqa: E402

from mlfolio import config, data, features, train, tune  # noqa: E402
from mlfolio.config import TuningConfig  # noqa: E402
from mlfolio.stages.training import baseline_start  # noqa: E402
from mlfolio.tune.workers import fold_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.001
RESULT_LINE = "median speed-up to target vs RandomizedSearchCV n_jobs=2"


def xgboost_distributions() -> dict[str, object]:
    """scipy equivalents of the tune stage's xgboost space (``tune.search_space``)."""
    out: dict[str, object] = {}
    for name, (kind, low, high, step, log) in tune.search_space("xgboost").items():
        if kind is int:
            dist = list(range(low, high + 1, step)) if step and step > 1 else randint(low, high + 1)
        else:
            dist = loguniform(low, high) if log else uniform(low, high - low)
        out[f"model__{name}"] = dist
    return out


class StampedScorer:
    """ROC AUC scorer that appends ``{"t": time, "key": candidate, "score": s}`` to a file
    (one line per fold; picklable, so it runs in the search's worker processes too)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.scorer = get_scorer("roc_auc")

    def __call__(self, estimator, X, y) -> float:
        score = self.scorer(estimator, X, y)
        params = estimator.named_steps["model"].get_params()
        key = json.dumps({k: params[k.removeprefix("model__")] for k in xgboost_distributions()})
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"t": time.time(), "key": key, "score": float(score)}) + "\n")
        return score


@dataclass
class Curve:
    """Best-so-far CV AUC over wall time: (seconds since start, AUC) at each improvement."""

    wall: float
    points: list[tuple[float, float]] = field(default_factory=list)

    def time_to(self, target: float) -> float | None:
        return next((t for t, v in self.points if v >= target), None)

    def best_at(self, seconds: float) -> float | None:
        got = [v for t, v in self.points if t <= seconds]
        return max(got) if got else None

    @property
    def best(self) -> float:
        return max(v for _, v in self.points)


def run_rival(cfg, train_df, n_trials: int, folds: StratifiedKFold, seed: int, tmp: Path) -> Curve:
    from joblib import Parallel, delayed

    X, y = features.xy(train_df, cfg.schema)
    pipe = features.build_model_pipeline(cfg.schema, train.make_estimator("xgboost", {}, seed))
    stamps = tmp / f"rival-{seed}.jsonl"
    stamps.unlink(missing_ok=True)
    search = RandomizedSearchCV(
        pipe,
        xgboost_distributions(),
        n_iter=n_trials,
        scoring=StampedScorer(stamps),
        cv=folds,
        n_jobs=2,
        refit=False,
        random_state=seed,
        error_score="raise",
    )
    Parallel(n_jobs=2)(delayed(abs)(i) for i in range(4))  # the process pool, off the clock
    start = time.time()
    search.fit(X, y)
    wall = time.time() - start
    done: dict[str, list[tuple[float, float]]] = {}
    for line in stamps.read_text().splitlines():
        row = json.loads(line)
        done.setdefault(row["key"], []).append((row["t"], row["score"]))
    finished = sorted(
        (max(t for t, _ in v) - start, float(np.mean([s for _, s in v]))) for v in done.values()
    )
    n_folds = folds.get_n_splits()
    assert all(len(v) == n_folds for v in done.values()) and len(done) == n_trials, "stamps"
    # Same numbers as the search's own results (the scorer only adds the timestamps).
    assert np.isclose(max(v for _, v in finished), np.max(search.cv_results_["mean_test_score"]))
    curve = Curve(wall)
    for t, v in finished:
        if not curve.points or v > curve.points[-1][1]:
            curve.points.append((t, v))
    return curve


def run_mlfolio(
    cfg, train_df, tuning: TuningConfig, seed: int, tmp: Path
) -> tuple[Curve, Curve, dict]:
    """The study's own best-so-far curve, and that curve re-scored on the full-row folds
    (what the rival's AUCs are)."""
    start_dt = datetime.now()
    start = time.perf_counter()
    # No registry here, so no champion: with tuning.warm_start on, the stage starts from
    # the train stage's model (training.xgboost), as on a project's first run.
    first = None if tuning.warm_start is False else baseline_start(cfg)
    study = tune.run_study(
        tuning,
        train_df,
        cfg.schema,
        seed,
        tmp / f"mlfolio-{seed}",
        "bench",
        first_trial=first and first["params"],
        first_trial_note=first and first["baseline"],
    )
    wall = time.perf_counter() - start
    trials = study.get_trials(deepcopy=False)
    complete = sorted(
        (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: t.datetime_complete,
    )
    own, rescored = Curve(wall), Curve(wall)
    full = tune.Folds.build(train_df, cfg.schema, tuning.cv_folds, seed)  # the rival's folds
    objective = tune.make_objective(full, "xgboost", seed, prune=False)
    best = -np.inf
    for t in complete:
        if t.value <= best:
            continue
        best = t.value
        when = (t.datetime_complete - start_dt).total_seconds()
        own.points.append((when, t.value))
        params = dict(t.params)
        if "n_estimators" in t.user_attrs:  # early stopping's rounds: what the refit uses
            params["n_estimators"] = t.user_attrs["n_estimators"]
        value = objective(optuna.trial.FixedTrial(params))
        if not rescored.points or value > rescored.points[-1][1]:
            rescored.points.append((when, value))
    states = [t.state.name for t in trials]
    info = {
        "trials": len(trials),
        "pruned": states.count("PRUNED"),
        "rows": tune.tuning_row_count(len(train_df), tuning.subsample_rows),
    }
    return own, rescored, info


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000, help="resampled rows (all splits)")
    parser.add_argument("--repeats", type=int, default=3, help="seeds seed, seed+1, ...")
    parser.add_argument("--trials", type=int, default=None, help="default: tuning.n_trials")
    parser.add_argument("--seed", type=int, default=None, help="default: the file's seed")
    parser.add_argument("--params", default=str(ROOT / "parameters" / "churn.yaml"))
    parser.add_argument(
        "--tuning",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a tuning key for mlfolio (e.g. subsample_rows=8000, pruner=none); "
        "the header prints what ran",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 rows, 6 trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.trials = 2_000, 1, 6

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # re-scoring a trial with early stopping's rounds (not on the space's grid of 25)
    warnings.filterwarnings("ignore", message="The value .* is out of the range")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    overrides = config.parse_overrides([f"tuning.{item}" for item in args.tuning])
    cfg = config.load(args.params, overrides)
    n_trials = args.trials or cfg.tuning.n_trials
    tuning = cfg.tuning.model_copy(
        update={"n_trials": n_trials, "timeout": None, "model": "xgboost"}
    )
    seed0 = cfg.seed if args.seed is None else args.seed
    load_start = load_average()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load_start}; "
        f"Python {platform.python_version()}, optuna {optuna.__version__}, "
        f"xgboost {xgboost.__version__}, scikit-learn {sklearn.__version__}"
    )
    print(
        f"data: {args.rows} rows resampled from {cfg.data.uri}; {n_trials} trials, "
        f"{tuning.cv_folds}-fold stratified CV, {args.repeats} seed(s) from {seed0}"
    )
    print(
        "mlfolio tune (parameter file's tuning, timeout off"
        + (f"; --tuning {' '.join(args.tuning)}" if args.tuning else "")
        + "): "
        + ", ".join(
            f"{k}={getattr(tuning, k)}"
            for k in (
                "pruner",
                "early_stopping_rounds",
                "subsample_rows",
                "n_workers",
                "warm_start",
            )
        )
        + f", fold_threads={tuning.fold_threads} ({fold_threads(tuning, tuning.n_workers)} used)"
    )
    header = (
        f"{'seed':>4} {'method':<28} {'trials':>11} {'rows':>6} {'wall s':>7} "
        f"{'to target s':>11} {'AUC @ equal s':>13} {'best AUC':>8} {'speed-up':>8}"
    )
    speedups: list[float] = []
    bests: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        rows = []
        for rep in range(args.repeats):
            seed = seed0 + rep
            df = data.validate(resample(args.rows, seed), cfg.schema)
            train_df = features.split(df, cfg.schema, cfg.split, cfg.seed)["train"]
            folds = StratifiedKFold(n_splits=tuning.cv_folds, shuffle=True, random_state=seed)
            rival = run_rival(cfg, train_df, n_trials, folds, seed, Path(tmp))
            own, ours, info = run_mlfolio(cfg, train_df, tuning, seed, Path(tmp))
            target = rival.best - TOLERANCE
            r_t, m_t = rival.time_to(target), ours.time_to(target)
            speedup = r_t / m_t if (m_t and r_t) else 0.0
            speedups.append(speedup)
            bests.append((rival.best, ours.best))
            equal = ours.wall
            rows.append(
                f"{seed:>4} {'RandomizedSearchCV n_jobs=2':<28} {n_trials:>11} "
                f"{len(train_df):>6} {rival.wall:>7.1f} {fmt(r_t):>11} "
                f"{fmt(rival.best_at(equal), '.4f'):>13} {rival.best:>8.4f} {'1.0x':>8}"
            )
            trials = f"{info['trials']} ({info['pruned']}p)"
            rows.append(
                f"{seed:>4} {'mlfolio tune':<28} {trials:>11} {info['rows']:>6} "
                f"{ours.wall:>7.1f} {fmt(m_t):>11} {fmt(ours.best_at(equal), '.4f'):>13} "
                f"{ours.best:>8.4f} {speedup:>7.1f}x"
            )
            if info["rows"] < len(train_df) or own.best != ours.best:
                rows.append(
                    f"{seed:>4} {'  (trial values as tuned)':<28} {'':>11} {info['rows']:>6} "
                    f"{'':>7} {'':>11} {'':>13} {own.best:>8.4f}"
                )
            print(
                f"seed {seed}: target {target:.4f}; rival {rival.wall:.1f} s, "
                f"mlfolio {ours.wall:.1f} s; load {load_average()}",
                flush=True,
            )
    print()
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    print(
        f"\ntarget = the rival's best CV AUC - {TOLERANCE}; 'AUC @ equal s' = best so far at "
        "mlfolio's finishing time; mlfolio's AUCs re-scored on the full-row folds (see the "
        "docstring); speed-up 0 = target not reached; (Np) = N trials pruned."
    )
    no_worse = sum(o >= r - TOLERANCE for r, o in bests)
    print(
        f"mlfolio's best CV AUC >= the rival's - {TOLERANCE} in {no_worse} of {len(bests)} "
        f"seed(s); median best: rival {np.median([r for r, _ in bests]):.4f}, "
        f"mlfolio {np.median([o for _, o in bests]):.4f}"
    )
    print(
        f"benchmark wall time {time.perf_counter() - t0:.0f} s; load average at start "
        f"{load_start}, now {load_average()} (2 cores: above ~0.5 other work shared them)"
    )
    print(f"{RESULT_LINE}: {float(np.median(speedups)):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
