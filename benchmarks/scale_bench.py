"""How each stage's cost grows with the rows: the whole default pipeline at several sizes.

The default data (``data/telco_churn.csv``) resampled to each size (benchmarks/resample.py,
seeded, stratified on churn), run end to end with ``parameters/churn.yaml`` (``data.uri``
pointing at the resampled Parquet; a throwaway tracking store and run folder under a temp
dir), each size in its own process. Per stage: wall time and the stage kernel's peak
resident memory (``VmHWM``, read by the engine when the notebook's cells are done, also on
the run's index page); per size: the orchestrating process's peak (``VmHWM``) and the
sum of the resident memory of every process of the run (orchestrator, running and warming
kernels, servers they start), sampled every 0.25 s. Prints a stage x size table and each
stage's growth exponent (the slope of log seconds over log rows between the two largest
sizes: 1.0 is linear), and writes the table (``scale.md``) and a log-log plot
(``scale.png``) to ``--out``.

    .venv/bin/python benchmarks/scale_bench.py                       # 4k, 40k, 400k, 2M rows
    .venv/bin/python benchmarks/scale_bench.py --sizes 40000,400000 --trials 10
    .venv/bin/python benchmarks/scale_bench.py --trials 10,10,10,5   # fewer trials at 2M
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import resample  # noqa: E402  (benchmarks/resample.py, beside this file)

DEFAULT_SIZES = "4000,40000,400000,2000000"
SEED = 0


def _code() -> str:
    """The commit measured (and whether the working tree differed from it)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lib", "notebooks"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "code: unknown commit"
    return f"code: commit {head or 'unknown'}" + (
        " with lib/ changes not committed" if dirty else ""
    )


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


class TreeSampler:
    """Sums the resident memory of this process and all its descendants every ``every``
    seconds; ``peak_mb`` is the largest sum seen (shared pages count once per process)."""

    def __init__(self, every: float = 0.25):
        import psutil

        self._me = psutil.Process()
        self._every = every
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self._every)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_child(
    data: Path, rows: int, trials: int, subsample: int, workdir: Path, extra: list[str]
) -> dict:
    """One whole run on ``data`` in this process (the orchestrator); its measurements."""
    from mlfolio import config, pipeline
    from mlfolio.procstat import peak_rss_mb

    overrides = {
        "data.uri": str(data),
        "tuning.n_trials": trials,
        "tuning.subsample_rows": subsample or None,
        # every size deploys: a small resample can miss the absolute ROC AUC bar
        "gate.min_roc_auc": 0.0,
        "tracking.tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "tracking.artifact_location": (workdir / "artifacts").as_uri(),
        **config.parse_overrides(extra),
    }
    params = ROOT / "parameters" / "churn.yaml"
    cfg = config.load(params, overrides)

    def echo(line: str) -> None:
        print(f"  [{rows:,} rows] {line}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with TreeSampler() as tree:
        manifest = pipeline.run(params, overrides, runs_root=workdir / "runs", echo=echo)
    total = time.perf_counter() - t0
    m = manifest.data
    tune_doc = json.loads((Path(m["run_dir"]) / "tune.json").read_text())
    return {
        "rows": rows,
        "trials": trials,
        "subsample_rows": getattr(cfg.tuning, "subsample_rows", None),
        "tuning_timeout": cfg.tuning.timeout,
        "trial_states": tune_doc.get("trial_states"),
        # the refit's boosting rounds: the best trial's early-stopped rounds, which differ
        # with the tuning sample, so the tune stage's work per row differs between sizes
        "refit_rounds": tune_doc.get("early_stopped_n_estimators"),
        "cpu_s": {name: s.get("cpu_s") for name, s in m["stages"].items()},
        "total_s": total,
        "stages": {
            name: {"s": s["duration_s"], "peak_mb": s.get("peak_rss_mb")}
            for name, s in m["stages"].items()
        },
        # VmHWM, not ru_maxrss: ru_maxrss keeps the high-water mark from before exec, i.e.
        # the parent's (which had just resampled the data) at the time it started this one.
        "orchestrator_peak_mb": peak_rss_mb(os.getpid()),
        "all_processes_peak_mb": tree.peak_mb,
        "test_roc_auc": m["candidate"]["test"]["roc_auc"],
    }


def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    """Slope of log time over log rows between two sizes (1.0: linear)."""
    return math.log(max(t2, 1e-9) / max(t1, 1e-9)) / math.log(n2 / n1)


def table(results: list[dict]) -> list[str]:
    """The stage x size table (seconds / GB), with each stage's growth exponent between
    the two largest sizes."""
    sizes = [r["rows"] for r in results]
    stages = list(results[0]["stages"])
    width = 18
    head = f"| {'stage':<22}|" + "".join(f" {f'{n:,} rows':>{width}} |" for n in sizes)
    growth = len(results) >= 2
    if growth:
        head += f" {'exponent':>8} |"
    lines = [head, "|" + "-" * 23 + "|" + ("-" * (width + 2) + "|") * len(sizes)]
    if growth:
        lines[1] += "-" * 10 + "|"

    def row(label: str, cells: list[str], times: list[float] | None) -> str:
        line = f"| {label:<22}|" + "".join(f" {c:>{width}} |" for c in cells)
        if growth:
            k = f"{exponent(times[-2], times[-1], sizes[-2], sizes[-1]):.2f}" if times else ""
            line += f" {k:>8} |"
        return line

    def cell(seconds: float | None, mb: float | None) -> str:
        s = f"{seconds:.1f} s" if seconds is not None else "-"
        return s + (f" / {mb / 1024:.2f} GB" if mb is not None else "")

    for name in stages:
        times = [r["stages"][name]["s"] for r in results]
        lines.append(
            row(
                name,
                [cell(r["stages"][name]["s"], r["stages"][name]["peak_mb"]) for r in results],
                times,
            )
        )
    totals = [r["total_s"] for r in results]
    lines.append(row("whole run", [cell(t, None) for t in totals], totals))
    for label, key in (
        ("orchestrator (peak)", "orchestrator_peak_mb"),
        ("all processes (peak)", "all_processes_peak_mb"),
    ):
        lines.append(row(label, [f"{r[key] / 1024:.2f} GB" for r in results], None))
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["rows"] for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5))
    for name in results[0]["stages"]:
        ax_t.plot(sizes, [r["stages"][name]["s"] for r in results], marker="o", label=name)
        mem = [r["stages"][name]["peak_mb"] for r in results]
        if all(m is not None for m in mem):
            ax_m.plot(sizes, [m / 1024 for m in mem], marker="o", label=name)
    ax_t.plot(sizes, [r["total_s"] for r in results], marker="s", color="black", label="whole run")
    ax_m.plot(
        sizes,
        [r["all_processes_peak_mb"] / 1024 for r in results],
        marker="s",
        color="black",
        label="all processes",
    )
    # a linear reference through the whole run's first point
    ref = [results[0]["total_s"] * n / sizes[0] for n in sizes]
    ax_t.plot(sizes, ref, ls=":", color="grey", label="linear")
    for ax, title, unit in ((ax_t, "wall time per stage", "seconds"), (ax_m, "peak memory", "GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="rows, comma separated")
    parser.add_argument(
        "--trials",
        default="10",
        help="tuning trials: one number, or one per size (comma separated)",
    )
    parser.add_argument(
        "--subsample-rows",
        type=int,
        default=20_000,
        help="tuning.subsample_rows: tune on a stratified sample of this many training rows "
        "above that many, refit the best on all (0: tune on all rows)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--data-dir", default=None, help="where resampled files are cached")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--child", nargs=3, metavar=("DATA", "ROWS", "TRIALS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        data, rows, trials = args.child
        with tempfile.TemporaryDirectory(prefix="mlfolio-scale-") as tmp:
            result = run_child(
                Path(data), int(rows), int(trials), args.subsample_rows, Path(tmp), args.param
            )
        print(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    trials = [int(t) for t in args.trials.split(",")]
    if len(trials) == 1:
        trials *= len(sizes)
    if len(trials) != len(sizes):
        parser.error(f"--trials: {len(trials)} value(s) for {len(sizes)} size(s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    load_before, code = _load(), _code()
    print(f"machine: {os.cpu_count()} cores; {load_before}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlfolio-scale-data-") as tmp:
        folder = Path(args.data_dir or tmp)
        for rows, n_trials in zip(sizes, trials, strict=True):
            data = resample.write(rows, SEED, folder)
            print(f"{rows:,} rows, {n_trials} trials ({_load()}) ...", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(data), str(rows), str(n_trials)]
                + [f"--subsample-rows={args.subsample_rows}"]
                + [f"-p={p}" for p in args.param],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    load_after = _load()
    first = results[0]
    subsample = first["subsample_rows"]
    header = [
        f"# Pipeline cost by rows ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Default parameters (parameters/churn.yaml) on the Telco rows resampled (seed {SEED}), "
        f"{os.cpu_count()} cores; {load_before} before, {load_after} after "
        f"(other work on the machine slows these figures); {code}.",
        "Tuning: "
        + ", ".join(f"{r['trials']} trials at {r['rows']:,}" for r in results)
        + f" (timeout {first['tuning_timeout']} s"
        + (
            f"; tuned on a stratified subsample of {subsample:,} rows above that many, "
            "the best refit on all training rows)"
            if subsample
            else "; tuned on all training rows)"
        )
        + "; trial states: "
        + "; ".join(
            f"{r['rows']:,}: "
            + ", ".join(f"{k.lower()} {v}" for k, v in (r["trial_states"] or {}).items())
            for r in results
        )
        + "; the best refit's boosting rounds: "
        + ", ".join(f"{r['rows']:,}: {r.get('refit_rounds') or 'as set'}" for r in results)
        + ".",
        "CPU seconds per stage (the kernel and its children; above the wall time: threads): "
        + "; ".join(
            f"{r['rows']:,}: "
            + ", ".join(f"{name} {cpu:.0f}" for name, cpu in (r.get("cpu_s") or {}).items() if cpu)
            for r in results
        )
        + ".",
        "gate.min_roc_auc 0 (every size registers, promotes and deploys). "
        "Cells: wall seconds / the stage kernel's peak resident memory (VmHWM). "
        "Exponent: slope of log seconds over log rows between the two largest sizes "
        "(1.0 = linear).",
        "",
        *(args.param and [f"Overrides: {' '.join(args.param)}", ""] or []),
    ]
    lines = table(results)
    text = "\n".join(header + lines) + "\n"
    (out / "scale.md").write_text(text)
    plot(results, out / "scale.png")
    print()
    print(text)
    print(f"table: {out / 'scale.md'}\nplot:  {out / 'scale.png'}")


if __name__ == "__main__":
    main()
