"""A spot interruption, simulated by the mechanism SageMaker uses, against no interruption.

Usage (from the project root)::

    .venv/bin/python benchmarks/spot_bench.py                      # ~2 min at load ~8
    .venv/bin/python benchmarks/spot_bench.py --trials 8 --quick   # smoke run, ~20 s
    .venv/bin/python benchmarks/spot_bench.py --spot-ratio 0.35    # another spot price

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
billable seconds = those at the spot price (x the spot/on-demand ratio: ``--spot-ratio``,
else one minus the typical spot discount of the dated price table in the repo,
``lib/mlfolio/cost/aws-us-east-1.yaml``). Also shown: the saving against the uninterrupted
run on demand, which
charges the interruption's extra time to spot. The load average is printed at the start
and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
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
    """Spot/on-demand price ratio: ``--spot-ratio`` when given, else one minus the typical
    spot discount of the dated price table in the repo (``mlfolio.cost``)."""
    if given is not None:
        return given, "--spot-ratio"
    try:
        from mlfolio import cost
    except ImportError:
        sys.exit("no price table in the repo (mlfolio.cost): give --spot-ratio")
    table = cost.load()
    discount = table.spot.typical_discount
    return 1.0 - discount, (
        f"{Path(str(table.path)).name} ({table.region}, as published {table.as_published}): "
        f"typical spot discount {discount:.0%}"
    )


def savings(billable_s: float, training_s: float) -> float:
    try:
        from mlfolio.cost import spot_savings_percent

        return spot_savings_percent(billable_s, training_s)
    except ImportError:
        return (1.0 - billable_s / training_s) * 100.0


def trial_seconds(trials: list, states: tuple[str, ...]) -> float:
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state.name in states and t.datetime_complete and t.datetime_start
    )


FINISHED = ("COMPLETE", "PRUNED")


def pair(args: argparse.Namespace, overrides: dict, tmp: Path) -> dict:
    """One uninterrupted run and one interrupted + restarted run; their measures."""
    from mlfolio.tune import spot

    clean_root, spot_root = tmp / "clean", tmp / "spot"
    prepare(clean_root, Path(args.params), overrides)
    _, checkpoints = prepare(spot_root, Path(args.params), overrides)

    clean_s, rc, err = run(clean_root)
    if rc != 0:
        sys.exit(f"uninterrupted run failed ({rc}):\n{err}")
    clean = study_of(clean_root / "checkpoints").trials
    done = [t for t in clean if t.state.name in FINISHED]
    trial_s = trial_seconds(clean, FINISHED) / max(1, len(done))

    kill_after = args.trials // 2 if args.kill_after is None else args.kill_after
    first_s, rc1, err1 = run(spot_root, kill=(kill_after, trial_s / 2))
    if rc1 != 128 + signal.SIGTERM:
        sys.exit(f"the interrupted run ended {rc1}, not 143 (SIGTERM too late?):\n{err1}")
    second_s, rc2, err2 = run(spot_root)
    if rc2 != 0:
        sys.exit(f"the restart failed ({rc2}):\n{err2}")
    (clean_attempt,) = spot.read_attempts(clean_root / "checkpoints")
    attempts = spot.read_attempts(checkpoints)
    resumed = study_of(checkpoints).trials
    if [a["outcome"] for a in attempts] != ["interrupted", "done"]:
        sys.exit(f"attempts recorded: {attempts}")
    first, second = (set(a["finished_here"]) for a in attempts)
    by_number = {t.number: t for t in resumed}
    params_first = {json.dumps(by_number[n].params, sort_keys=True) for n in first}
    rerun = len(first & second) + sum(
        json.dumps(by_number[n].params, sort_keys=True) in params_first for n in second
    )

    def work(a: dict) -> float:  # the attempt's own clock: spec, data, folds, study, trials
        return a["ended"] - a["started"]

    clean_work, works = work(clean_attempt), [work(a) for a in attempts]
    # Tuning time that is no finished trial's, interrupted minus uninterrupted: what the
    # interruption cost apart from which trials each run sampled (the stopped trial's lost
    # seconds, the restart's spec, data, folds and study loading).
    overhead = (sum(works) - trial_seconds(resumed, FINISHED)) - (
        clean_work - trial_seconds(clean, FINISHED)
    )
    restarted = [t for t in resumed if t.datetime_start.timestamp() >= attempts[1]["started"]]
    setup = min(t.datetime_start.timestamp() for t in restarted) - attempts[1]["started"]
    return {
        "setup": setup,
        "startup": second_s - works[1],
        "kill_after": kill_after,
        "trial_s": trial_s,
        "clean_trials": len(done),
        "clean_work": clean_work,
        "clean_s": clean_s,
        "first": len(first),
        "second": len(second),
        "finished": sum(t.state.name in FINISHED for t in resumed),
        "failed": sum(t.state.name == "FAIL" for t in resumed),
        "lost_s": trial_seconds(resumed, ("FAIL",)),
        "works": works,
        "procs": [first_s, second_s],
        "rerun": rerun,
        "overhead": overhead,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "parameters" / "churn.yaml"))
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--cv-folds", type=int, default=5)
    ap.add_argument("--pruner", default="none", help="tuning.pruner (none: full trials)")
    ap.add_argument(
        "--kill-after", type=int, default=None, help="SIGTERM in the trial after this many"
    )
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs (medians reported)")
    ap.add_argument("--spot-ratio", type=float, default=None, help="spot / on-demand price")
    ap.add_argument("--quick", action="store_true", help="3 folds, one pair: a smoke run")
    args = ap.parse_args()
    folds = 3 if args.quick else args.cv_folds
    repeats = 1 if args.quick else args.repeats
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
        f"Telco data (data/telco_churn.csv); {repeats} pair(s) of runs"
    )
    results = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="spot-bench-") as tmp:
            results.append(pair(args, overrides, Path(tmp)))

    head = ("pair", "run", "finished", "failed", "tuning s", "process s")
    cells = [head]
    for i, r in enumerate(results, 1):
        cells += [
            (
                str(i),
                "uninterrupted",
                str(r["clean_trials"]),
                "-",
                f"{r['clean_work']:.1f}",
                f"{r['clean_s']:.1f}",
            ),
            (
                str(i),
                "attempt 1, SIGTERM",
                str(r["first"]),
                str(r["failed"]),
                f"{r['works'][0]:.1f}",
                f"{r['procs'][0]:.1f}",
            ),
            (
                str(i),
                "attempt 2, restart",
                str(r["second"]),
                "0",
                f"{r['works'][1]:.1f}",
                f"{r['procs'][1]:.1f}",
            ),
        ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    med = {
        k: statistics.median(f(r) for r in results)
        for k, f in {
            "trial": lambda r: r["trial_s"],
            "clean_work": lambda r: r["clean_work"],
            "work": lambda r: sum(r["works"]),
            "clean_s": lambda r: r["clean_s"],
            "total_s": lambda r: sum(r["procs"]),
            "overhead": lambda r: r["overhead"],
            "lost": lambda r: r["lost_s"],
            "setup": lambda r: r["setup"],
            "startup": lambda r: r["startup"],
        }.items()
    }
    rerun = sum(r["rerun"] for r in results)
    complete = all(r["finished"] == args.trials for r in results)
    print(
        f"SIGTERM half a mean trial after trial {results[0]['kill_after']} finished. tuning s: "
        "the attempt's own clock (spec, data, folds, study, trials); process s: start to "
        "exit (adds Python's start-up and imports, paid again by the restart)."
    )
    print(
        f"medians: mean trial {med['trial']:.2f} s. Where the extra time goes: the stopped "
        f"trial's lost seconds {med['lost']:.2f}; the restart's setup before its first trial "
        f"{med['setup']:.2f} s (spec, data, the folds kept in the checkpoint folder, the "
        f"study); its Python start-up and imports {med['startup']:.1f} s; its first trial "
        "builds xgboost's fold matrices again; the resumed study samples other points than "
        "the uninterrupted one (trials of other lengths). Time outside finished trials, "
        f"interrupted minus uninterrupted: {med['overhead']:+.2f} s."
    )
    within = med["work"] - med["clean_work"] <= med["trial"]
    within_proc = med["total_s"] - med["clean_s"] <= med["trial"]
    billable, training = med["total_s"] * ratio, med["total_s"]
    reported = savings(billable, training)
    net = (1.0 - billable / med["clean_s"]) * 100.0
    print(
        f"spot/on-demand price {ratio:.2f} from {ratio_source}: billable {billable:.1f} s of "
        f"{training:.1f} s training (process seconds, both attempts); against the "
        f"uninterrupted run on demand: {net:.1f}% saved"
    )
    load1 = os.getloadavg()
    print(f"load average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} (end)")
    print(
        f"re-run trials: {rerun}; interrupted+restart {med['work']:.1f} s vs uninterrupted "
        f"{med['clean_work']:.1f} s + one trial {med['trial']:.2f} s: "
        f"{'within' if within else 'over'} (tuning clock; process clock {med['total_s']:.1f} s "
        f"vs {med['clean_s']:.1f} s: {'within' if within_proc else 'over'}); SageMaker's "
        f"savings figure {reported:.1f}% (net of the interruption {net:.1f}%)"
    )
    if rerun or not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
