"""A spot interruption, simulated by the mechanism SageMaker uses, against no interruption.

Usage (from the project root)::

    .venv/bin/python benchmarks/spot_bench.py                      # ~1 min at load ~1
    .venv/bin/python benchmarks/spot_bench.py --trials 8 --quick   # smoke run, ~20 s
    .venv/bin/python benchmarks/spot_bench.py --spot-ratio 0.35    # without the price table

What runs: the tune job's container entry (``mlfolio tune-job --in-container``, the
process SageMaker starts) on the real Telco data (``data/telco_churn.csv``, split as the
preprocess stage does), in a folder laid out as ``/opt/ml`` is (input channels ``spec`` and
``train``, ``checkpoints/``, ``model/``), the parameter file's ``tuning`` section with
``n_trials`` = ``--trials``, ``cv_folds`` = ``--cv-folds``, no timeout, one worker.

* uninterrupted: one process, start to exit;
* interrupted: the same, sent SIGTERM (SageMaker's two-minute notice of a spot
  interruption) at ``--kill-at`` of the uninterrupted run's wall time (mid-trial), then
  started again on the same checkpoint folder, as SageMaker restarts the job with its
  checkpoints restored. Its wall time is the two processes' (startup, reading the data and
  building the folds are paid twice; the waiting SageMaker does between them is not here).

Reported: trials finished by each attempt, finished trials run again (completed by the
first attempt and again by the second: the same trial number, or the same parameters;
must be 0), trials failed by the SIGTERM, wall times, and the goal: interrupted + restart
<= uninterrupted + one trial (the uninterrupted run's mean trial). The resumed study
samples its own points (its sampler is seeded past the finished trials), so its trials
are not the uninterrupted run's: their durations differ, which moves the comparison
either way by a trial's variation.

Savings: SageMaker reports ``(1 - BillableTimeInSeconds / TrainingTimeInSeconds) x 100``
for a managed spot job. Simulated here: training seconds = both attempts' wall time,
billable seconds = those at the spot price (x the spot/on-demand ratio: one minus the
typical discount of the price table in the repo, ``mlfolio.cost``, when it is there; else
``--spot-ratio``). Also shown: the saving against the uninterrupted run on demand, which
charges the interruption's extra time to spot. The load average is printed at the start
and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
MLFOLIO = [sys.executable, "-m", "mlfolio.cli"]


def prepare(root: Path, params: Path, overrides: dict) -> tuple[dict, Path]:
    """An /opt/ml-like folder with the two input channels; returns the spec."""
    from mlfolio import config, data, features
    from mlfolio.tune import spot

    cfg = config.load(params, overrides)
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    train = features.split(df, cfg.schema, cfg.split, cfg.seed)["train"]
    paths = spot.JobPaths(root)
    for path in (paths.spec, paths.train):
        path.parent.mkdir(parents=True, exist_ok=True)
    train.to_parquet(paths.train, index=False)
    spec = spot.job_spec(cfg, "spot-bench")
    paths.spec.write_text(json.dumps(spec))
    return spec, paths.checkpoints


def start(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [*MLFOLIO, "tune-job", "--in-container", "--opt-ml", str(root)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished_count(checkpoints: Path) -> int:
    if not (checkpoints / "tune" / "study.journal").is_file():
        return 0
    try:
        trials = study_of(checkpoints).trials
    except KeyError:  # the study is not created yet
        return 0
    return sum(t.state.is_finished() and t.state.name != "FAIL" for t in trials)


def run(root: Path, kill: tuple[int, float] | None = None) -> tuple[float, int, str]:
    """One container process: (wall seconds, exit code, stderr tail). ``kill``: (k, s):
    SIGTERM ``s`` seconds after the k-th trial finished (inside the next trial)."""
    t0 = time.perf_counter()
    proc = start(root)
    if kill is not None:
        k, after = kill
        while proc.poll() is None and finished_count(root / "checkpoints") < k:
            time.sleep(0.05)
        time.sleep(after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    return time.perf_counter() - t0, proc.returncode, err.decode()[-2000:]


def study_of(checkpoints: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(checkpoints / "tune" / "study.journal"))
    return optuna.load_study(
        study_name="spot-bench", storage=optuna.storages.JournalStorage(backend)
    )


def spot_ratio(given: float | None) -> tuple[float, str]:
    """Spot/on-demand price ratio: the repo's price table's typical discount, else given."""
    try:
        from mlfolio import cost  # the dated price table, when it is in the repo

        table = cost.load()
        prov = table.provenance()
        where = ", ".join(f"{k} {v}" for k, v in prov.items() if k in ("region", "published"))
        return 1.0 - table.spot.typical_discount, f"price table ({where or 'mlfolio.cost'})"
    except ImportError:
        pass
    if given is None:
        sys.exit("no price table in the repo (mlfolio.cost): give --spot-ratio")
    return given, "--spot-ratio"


def savings(billable_s: float, training_s: float) -> float:
    try:
        from mlfolio.cost import spot_savings_percent

        return spot_savings_percent(billable_s, training_s)
    except ImportError:
        return (1.0 - billable_s / training_s) * 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "parameters" / "churn.yaml"))
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--cv-folds", type=int, default=5)
    ap.add_argument("--pruner", default="none", help="tuning.pruner (none: full trials)")
    ap.add_argument(
        "--kill-after", type=int, default=None, help="SIGTERM in the trial after this many"
    )
    ap.add_argument("--spot-ratio", type=float, default=None, help="spot / on-demand price")
    ap.add_argument("--quick", action="store_true", help="3 folds: a smoke run")
    args = ap.parse_args()
    folds = 3 if args.quick else args.cv_folds
    overrides = {
        "tuning.n_trials": args.trials,
        "tuning.cv_folds": folds,
        "tuning.pruner": args.pruner,
        "tuning.timeout": None,
        "tuning.n_workers": 1,
        "tuning.warm_start": False,
    }
    ratio, ratio_source = spot_ratio(args.spot_ratio)
    load0 = os.getloadavg()
    print(f"spot_bench: load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} (start)")
    print(
        f"tune: {args.trials} trials, {folds}-fold CV, pruner {args.pruner}, 1 worker, "
        f"Telco data ({ROOT / 'data' / 'telco_churn.csv'})"
    )
    with tempfile.TemporaryDirectory(prefix="spot-bench-") as tmp:
        clean_root, spot_root = Path(tmp) / "clean", Path(tmp) / "spot"
        prepare(clean_root, Path(args.params), overrides)
        _, checkpoints = prepare(spot_root, Path(args.params), overrides)

        clean_s, rc, err = run(clean_root)
        if rc != 0:
            sys.exit(f"uninterrupted run failed ({rc}):\n{err}")
        clean = study_of(clean_root / "checkpoints")
        done = [t for t in clean.trials if t.state.is_finished() and t.datetime_complete]
        trial_s = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
        trial_s /= max(1, len(done))

        kill_after = args.trials // 2 if args.kill_after is None else args.kill_after
        first_s, rc1, err1 = run(spot_root, kill=(kill_after, trial_s / 2))
        if rc1 != 128 + signal.SIGTERM:
            sys.exit(f"the interrupted run ended {rc1}, not 143 (SIGTERM too late?):\n{err1}")
        second_s, rc2, err2 = run(spot_root)
        if rc2 != 0:
            sys.exit(f"the restart failed ({rc2}):\n{err2}")
        from mlfolio.tune import spot

        (clean_attempt,) = spot.read_attempts(clean_root / "checkpoints")
        attempts = spot.read_attempts(checkpoints)
        resumed = study_of(checkpoints).trials  # read before the folder goes

    if [a["outcome"] for a in attempts] != ["interrupted", "done"]:
        sys.exit(f"attempts recorded: {attempts}")
    first, second = (set(a["finished_here"]) for a in attempts)
    by_number = {t.number: t for t in resumed}
    params_first = {json.dumps(by_number[n].params, sort_keys=True) for n in first}
    rerun = len(first & second) + sum(
        json.dumps(by_number[n].params, sort_keys=True) in params_first for n in second
    )
    finished = [t for t in resumed if t.state.is_finished() and t.state.name != "FAIL"]
    failed = [t.number for t in resumed if t.state.name == "FAIL"]

    def work(a: dict) -> float:  # the attempt's own clock: spec, data, folds, study, trials
        return a["ended"] - a["started"]

    clean_work = work(clean_attempt)
    work_s = [work(a) for a in attempts]
    total_s, total_work = first_s + second_s, sum(work_s)
    within = total_work - clean_work <= trial_s
    billable_s = total_s * ratio
    reported = savings(billable_s, total_s)
    net = (1.0 - billable_s / clean_s) * 100.0

    rows = [
        ("uninterrupted", len(done), "-", clean_work, clean_s, len(done)),
        ("attempt 1 (SIGTERM)", len(first), len(failed), work_s[0], first_s, "-"),
        ("attempt 2 (restart)", len(second), 0, work_s[1], second_s, len(finished)),
        ("interrupted total", len(first) + len(second), len(failed), total_work, total_s, ""),
    ]
    head = ("run", "trials finished", "failed", "tuning s", "process s", "study has")
    cells = [head] + [
        tuple(f"{c:.1f}" if isinstance(c, float) else str(c) for c in r) for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"SIGTERM half a mean trial after trial {kill_after} finished; mean trial "
        f"{trial_s:.2f} s. tuning s: the attempt's clock (spec, data, folds, study, trials); "
        f"process s: start to exit (adds Python's start-up and imports, paid per restart: "
        f"{first_s - work_s[0]:.1f} s and {second_s - work_s[1]:.1f} s here)"
    )
    print(
        f"spot/on-demand price {ratio:.2f} from {ratio_source}: billable {billable_s:.1f} s of "
        f"{total_s:.1f} s training (process s); against the uninterrupted run on demand: "
        f"{net:.1f}% saved"
    )
    load1 = os.getloadavg()
    print(f"load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} (end)")
    print(
        f"re-run trials: {rerun} (of {len(first)} finished before the SIGTERM); tuning "
        f"time interrupted+restart {total_work:.1f} s vs uninterrupted {clean_work:.1f} s + "
        f"one trial {trial_s:.2f} s: {'within' if within else 'over'} (process time "
        f"{total_s:.1f} s vs {clean_s:.1f} s); SageMaker's savings figure {reported:.1f}% "
        f"(net of the interruption {net:.1f}%)"
    )
    if rerun or len(finished) != args.trials:
        sys.exit(1)


if __name__ == "__main__":
    main()
