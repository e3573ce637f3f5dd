"""The monitoring loop on the default experiment, end to end (what `make run` ends with).

1. Serves ``models:/<model>@champion`` with a prediction log (and the challenger in shadow
   when one exists) on a free loopback port.
2. Replays the champion's held-out rows (its run's validation and test splits) as traffic,
   with drift injected: prices rise (monthly charges +40 % +10), a campaign moves DSL
   customers to fiber and everyone to paperless electronic billing, two-year contracts
   turn into month-to-month, a third of the customers are new (tenure / 3). The drifted
   copies stand in for the monitored period's customers, so they get new ids (the
   original id plus the period, e.g. ``7590-VHVEG-2026m12``): see :func:`as_new_customers`.
3. Writes the customers' real outcomes as a labels file (``customerid,churn``): ground truth
   arriving after the predictions.
4. Runs ``mlfolio monitor`` on the prediction log and the labels: drift report, A/B
   (shadow) report, and — the policy fires on this drift — a retraining run whose model is
   promoted only if it beats the champion.

    .venv/bin/python tools/monitor_demo.py parameters/churn.yaml [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def drifted(df: pd.DataFrame) -> pd.DataFrame:
    """A price rise, a campaign moving customers to fiber and paperless electronic billing,
    two-year contracts ending, and a third of the customers new."""
    out = df.copy()
    out["monthlycharges"] = out["monthlycharges"] * 1.4 + 10
    out.loc[out["contract"] == "Two year", "contract"] = "Month-to-month"
    out.loc[out.index % 3 == 0, "tenure"] //= 3
    out.loc[out["internetservice"] == "DSL", "internetservice"] = "Fiber optic"
    out["paperlessbilling"] = "Yes"
    out.loc[out["paymentmethod"] == "Mailed check", "paymentmethod"] = "Electronic check"
    return out


def as_new_customers(df: pd.DataFrame, id_column: str, period: str) -> pd.DataFrame:
    """``df`` with each id suffixed by ``-<period>``: new observations of new customers.

    A row keeps its split for life (``split.method: hash``: the split comes from a hash of
    its id). Under their own ids, the champion's held-out customers would all land in the
    retraining's valid/test splits again and it would train on none of the drifted rows;
    new ids hash across train/valid/test like any new customer's."""
    out = df.copy()
    out[id_column] = out[id_column].astype(str) + f"-{period}"
    return out


def prediction_log_dir(experiment: str) -> Path:
    """A new folder for the demo's prediction log under the project's runs/."""
    from mlfolio.config import project_dir

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return project_dir() / "runs" / "prediction-logs" / f"{stamp}-{experiment}"


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [str(BIN / "mlfolio"), "serve", "--port", "0", *args], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        print(line, end="", file=sys.stderr)
        if match := re.search(r"listening on (http://\S+)", line):
            return proc, match.group(1)
    raise SystemExit("mlfolio serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params_file", nargs="?", default="parameters/churn.yaml")
    parser.add_argument("--dry-run", action="store_true", help="decide, do not retrain")
    parser.add_argument(
        "--log-dir",
        help="prediction log folder (default: a new runs/prediction-logs/<UTC time>-<experiment>)",
    )
    args = parser.parse_args()

    import httpx

    from mlfolio import config, registry, tracking

    cfg = config.load(args.params_file)
    tracking.configure(cfg)
    champion = registry.get_alias(cfg.model_name, registry.CHAMPION)
    if champion is None:
        raise SystemExit(f"no {cfg.model_name}@champion: run `mlfolio run {args.params_file}`")
    challenger = registry.get_alias(cfg.model_name, registry.CHALLENGER)
    from mlflow import MlflowClient

    source = Path(
        MlflowClient().get_model_version(cfg.model_name, champion.version).tags["mlfolio.run_dir"]
    )
    held_out = pd.concat(
        [pd.read_parquet(source / "data" / f"{s}.parquet") for s in ("valid", "test")],
        ignore_index=True,
    )
    id_column = cfg.schema.id_column or "customerid"
    period = datetime.now(UTC).strftime("%Ym%m")
    traffic = as_new_customers(drifted(held_out), id_column, period)
    # Beside the run folders it feeds, kept after the demo: the monitor run records it as
    # its source, and a new folder per demo keeps earlier traffic out of the window.
    log_dir = Path(args.log_dir) if args.log_dir else prediction_log_dir(cfg.experiment)
    log_dir.mkdir(parents=True, exist_ok=True)
    serve_args = [
        "--model",
        f"models:/{cfg.model_name}@champion",
        "--tracking-uri",
        cfg.tracking_uri(),
        "--prediction-log",
        str(log_dir),
        "--entity-column",
        id_column,
    ]
    if challenger is not None and challenger.version != champion.version:
        serve_args += ["--challenger", f"models:/{cfg.model_name}@challenger", "--shadow"]
    proc, url = start_server(serve_args)
    try:
        rows = traffic.drop(columns=[cfg.schema.target])
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=30) as client:
            for start in range(0, len(rows), 25):
                chunk = rows.iloc[start : start + 25]
                body = {
                    "dataframe_split": {
                        "columns": list(chunk.columns),
                        "data": chunk.astype(object).values.tolist(),
                    }
                }
                client.post("/invocations", json=body).raise_for_status()
        print(
            f"sent {len(rows)} drifted rows to {url} in "
            f"{time.perf_counter() - started:.1f}s; log: {log_dir}",
            file=sys.stderr,
        )
    finally:
        proc.send_signal(signal.SIGTERM)  # flushes the log
        proc.wait(timeout=30)
    labels = log_dir / "outcomes.csv"
    traffic[[id_column, cfg.schema.target]].to_csv(labels, index=False)
    cmd = [
        str(BIN / "mlfolio"),
        "monitor",
        args.params_file,
        "--prediction-log",
        str(log_dir),
        "--labels",
        str(labels),
        *(["--dry-run"] if args.dry_run else []),
    ]
    print("$ " + " ".join(cmd), file=sys.stderr)
    code = subprocess.call(cmd, env={**os.environ})
    drift = log_dir / "drift.json"
    if drift.exists():
        doc = json.loads(drift.read_text())
        print(
            f"drift share {doc['share_drifted']:.2f}, retrain: {doc['decision']['retrain']}"
            f" — monitor run: {doc['monitor_run_dir']}/index.html",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
