"""Wall time of the default run per stage, and the orchestration overhead.

Runs the default churn experiment twice in one go, into a throwaway tracking store:
once as `mlfolio run` does it (each stage on a kernel started and warmed while the
previous stage ran) and once with plain papermill (a cold kernel per stage), the obvious
alternative. Overhead = stage wall time - time spent in the notebook's cells after its
setup cell (kernel start, imports, tracking-store start-up, HTML export).

    .venv/bin/python benchmarks/pipeline_bench.py            # full default parameters
    .venv/bin/python benchmarks/pipeline_bench.py -p tuning.n_trials=5
    .venv/bin/python benchmarks/pipeline_bench.py --no-warm -p data.sample_rows=600   # quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from mlfolio import config, pipeline

ROOT = Path(__file__).resolve().parents[1]


def measure(params: Path, overrides: dict, warm: bool, workdir: Path) -> tuple[float, dict]:
    store = workdir / ("warm" if warm else "cold")
    store.mkdir()
    overrides = {
        **overrides,
        "tracking.tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
        "tracking.artifact_location": (store / "artifacts").as_uri(),
    }
    t0 = time.perf_counter()
    manifest = pipeline.run(
        params, overrides, runs_root=store / "runs", warm_kernels=warm, echo=lambda line: None
    )
    return time.perf_counter() - t0, manifest.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "parameters" / "churn.yaml"))
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-cold", action="store_true", help="skip the plain papermill run")
    parser.add_argument("--no-warm", action="store_true", help="skip the mlfolio run variant")
    args = parser.parse_args()
    if args.no_cold and args.no_warm:
        parser.error("--no-cold and --no-warm leave nothing to run")
    overrides = config.parse_overrides(args.param)
    print(f"machine: {os.cpu_count()} cores; parameters: {args.params} {overrides or ''}")
    with tempfile.TemporaryDirectory(prefix="mlfolio-bench-") as tmp:
        results = {}
        if not args.no_warm:
            results["warm kernels (mlfolio run)"] = measure(
                Path(args.params), overrides, True, Path(tmp)
            )
        if not args.no_cold:
            results["cold kernels (plain papermill)"] = measure(
                Path(args.params), overrides, False, Path(tmp)
            )
    for label, (total, m) in results.items():
        print(
            f"\n{label}: whole run {total:.1f} s, candidate test ROC AUC "
            f"{m['candidate']['test']['roc_auc']:.4f}"
        )
        print(f"{'stage':<11}{'wall s':>8}{'setup s':>9}{'stage code s':>14}{'overhead s':>12}")
        overheads = []
        for name, s in m["stages"].items():
            code = s["cells_s"] - s["setup_cell_s"]
            overhead = s["duration_s"] - code
            overheads.append(overhead)
            print(
                f"{name:<11}{s['duration_s']:>8.2f}{s['setup_cell_s']:>9.2f}{code:>14.2f}"
                f"{overhead:>12.2f}"
            )
        print(f"{'mean':<11}{'':>8}{'':>9}{'':>14}{sum(overheads) / len(overheads):>12.2f}")


if __name__ == "__main__":
    main()
