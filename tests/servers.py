"""Helpers for tests that run `mlfolio serve` in a subprocess: two registered versions of a
model (champion and challenger, real Telco rows), starting and stopping servers, waiting
for the prediction log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, predlog, registry, tracking

from .conftest import CHURN_PARAMS

MODEL = "churn-ab-test"
THRESHOLDS = {"champion": 0.35, "challenger": 0.5}


@dataclass
class Registered:
    tracking_uri: str
    models: dict[str, Any]  # variant -> fitted pipeline, in process
    X: pd.DataFrame  # raw feature rows
    ids: pd.Series  # customerid of each row


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: list[str]


def register_models(folder: Path, name: str = MODEL) -> Registered:
    """Two logistic regressions on different Telco rows: version 1 champion, 2 challenger."""
    cfg = config.load(CHURN_PARAMS)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(
                update={"tracking_uri": uri, "artifact_location": (folder / "artifacts").as_uri()}
            )
        }
    )
    df = data.validate(data.load_source(cfg.data), cfg.schema).reset_index(drop=True)
    X, y = features.xy(df, cfg.schema)
    fits = {"champion": (slice(0, 1000), 1.0), "challenger": (slice(1000, 2000), 0.02)}
    models = {}
    tracking.configure(cfg)
    try:
        for variant, (rows, c) in fits.items():
            model = features.build_model_pipeline(
                cfg.schema, LogisticRegression(C=c, max_iter=1000)
            )
            model.fit(X.iloc[rows], y.iloc[rows])
            with mlflow.start_run() as run:
                model_uri = tracking.log_model(model, X.iloc[rows], schema=cfg.schema)
            ref = registry.register(
                name,
                model_uri,
                run.info.run_id,
                {"mlfolio.threshold": f"{THRESHOLDS[variant]:.6f}"},
            )
            registry.set_alias(ref, variant, "A/B test")
            models[variant] = model
    finally:
        mlflow.set_tracking_uri(None)
    return Registered(uri, models, X.reset_index(drop=True), df[cfg.schema.id_column].astype(str))


def start_server(registered: Registered, *args: str, name: str = MODEL) -> Server:
    """``mlfolio serve`` in a subprocess on a free port; returns once it listens."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlfolio.cli",
            "serve",
            "--model",
            f"models:/{name}@champion",
            "--tracking-uri",
            registered.tracking_uri,
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log: list[str] = []
    listening = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "listening on" in line:
                listening.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 60
    while not listening.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"mlfolio serve did not start:\n{''.join(log)}")
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", "".join(log)).group(1))
    return Server(f"http://127.0.0.1:{port}", proc, log)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def split_body(df: pd.DataFrame, entity: list[str] | None = None) -> dict[str, Any]:
    frame = df if entity is None else df.assign(customerid=entity)
    return {
        "dataframe_split": {
            "columns": list(frame.columns),
            "data": frame.astype(object).values.tolist(),
        }
    }


def wait_for_rows(
    folder: Path, n: int, include_shadow: bool = True, timeout: float = 10
) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    while True:
        try:
            df = predlog.read(folder, include_shadow=include_shadow)
        except Exception:  # the server may not have created the file yet
            df = None
        if df is not None and len(df) >= n:
            return df
        if time.monotonic() > deadline:
            pytest.fail(
                f"the prediction log holds {0 if df is None else len(df)} rows, expected {n}"
            )
        time.sleep(0.1)


def typed_value(value: Any, datatype: str) -> Any:
    """A raw Telco value as the signature's type says (blank text is a missing number)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if datatype == "BYTES":
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    return float(value) if datatype == "FP64" else int(value)
