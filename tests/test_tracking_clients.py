"""The logged model as MLflow's own clients use it: ``mlflow.pyfunc.load_model(...).predict``,
``mlflow models predict -t csv`` and ``mlflow models serve`` (a real subprocess, a real HTTP
client, JSON bodies) take rows as pandas reads the CSV (integer flags and tenure,
``totalcharges`` as text with blanks, the id column, even the label) and typed rows alike,
and score them as ``mlfolio serve`` does.

The model is registered by tests/servers.py (a logistic regression on real Telco rows, logged
through :func:`mlfolio.tracking.log_model`); the reference scores come from ``mlfolio serve``
in a subprocess, over HTTP, on the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from mlfolio import config, tracking

from . import servers
from .conftest import CHURN_CSV, CHURN_PARAMS
from .team import BIN, _spawn, _wait_http, free_port, stop

NAME = "churn-classifier"
CHAMPION = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> servers.Registered:
    return servers.register_models(tmp_path_factory.mktemp("registry"), name=NAME)


@pytest.fixture(scope="module")
def raw_csv(tmp_path_factory) -> Path:
    """Rows of the source file as a client holds them to score: the label dropped, the id
    column kept, the new customers' blank ``totalcharges`` among them."""
    raw = pd.read_csv(CHURN_CSV, dtype=str, keep_default_na=False)  # the file's own text
    blank = raw.index[raw["totalcharges"].str.strip() == ""]
    rows = raw.loc[raw.index[:40].union(blank)].drop(columns=["churn"])
    path = tmp_path_factory.mktemp("rows") / "to_score.csv"
    rows.to_csv(path, index=False)
    return path


def read_rows(path: Path) -> pd.DataFrame:
    """The file as ``pd.read_csv`` reads it: ints, floats, and totalcharges as text."""
    rows = pd.read_csv(path)
    assert rows["tenure"].dtype == np.int64 and rows["seniorcitizen"].dtype == np.int64
    assert rows["totalcharges"].dtype == object and (rows["totalcharges"] == " ").any()
    return rows


def typed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The same rows typed as the schema declares them (numbers float, categories text)."""
    schema = config.load(CHURN_PARAMS).schema
    return tracking.signature_example(rows, list(schema.numeric), list(schema.categorical))


@pytest.fixture(scope="module")
def mlfolio_scores(registered, raw_csv) -> np.ndarray:
    """``mlfolio serve``'s probabilities for the file's rows (a text/csv request)."""
    server = servers.start_server(registered, name=NAME)
    try:
        resp = httpx.post(
            f"{server.url}/invocations",
            content=raw_csv.read_bytes(),
            headers={"Content-Type": "text/csv"},
            timeout=30,
        )
    finally:
        servers.stop_server(server.proc)
    assert resp.status_code == 200, resp.text
    scores = np.asarray(resp.json()["predictions"], dtype=float)
    assert scores.shape == (len(read_rows(raw_csv)), 2)
    return scores


@pytest.fixture
def champion(registered, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    mlflow.set_tracking_uri(registered.tracking_uri)
    try:
        yield mlflow.pyfunc.load_model(CHAMPION)
    finally:
        mlflow.set_tracking_uri(None)


def test_pyfunc_scores_rows_as_pandas_reads_the_csv(champion, raw_csv, mlfolio_scores):
    got = np.asarray(champion.predict(read_rows(raw_csv)), dtype=float)
    np.testing.assert_allclose(got, mlfolio_scores, rtol=0, atol=1e-9)


def test_pyfunc_scores_the_source_file_itself(champion, registered):
    """The data file as is, label column and all: MLflow ignores the columns the model
    does not read."""
    raw = pd.read_csv(CHURN_CSV).head(200)
    got = np.asarray(champion.predict(raw), dtype=float)
    want = registered.models["champion"].predict_proba(raw.drop(columns=["customerid", "churn"]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_pyfunc_scores_typed_rows_alike(champion, raw_csv, mlfolio_scores):
    typed = typed_rows(read_rows(raw_csv))
    assert typed["tenure"].dtype == np.float64 and typed["totalcharges"].isna().any()
    got = np.asarray(champion.predict(typed), dtype=float)
    np.testing.assert_allclose(got, mlfolio_scores, rtol=0, atol=1e-9)


def test_the_declared_types_stay_visible(champion):
    schema = config.load(CHURN_PARAMS).schema
    declared = champion.metadata.metadata["mlfolio"]
    assert declared["numeric"] == schema.numeric
    assert declared["categorical"] == schema.categorical
    assert declared["id_column"] == "customerid"
    assert [c.name for c in champion.metadata.get_input_schema().inputs] == schema.features


def _cli_env(registered) -> dict[str, str]:
    """What a user's shell holds: the venv's bin on PATH, the store in the environment."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
    }


def test_mlflow_models_predict_reads_the_csv(registered, raw_csv, mlfolio_scores, tmp_path):
    out = tmp_path / "predictions.json"
    args = ["models", "predict", "-m", CHAMPION, "-i", str(raw_csv), "-t", "csv"]
    done = subprocess.run(
        [str(BIN / "mlflow"), *args, "-o", str(out), "--env-manager", "local"],
        env=_cli_env(registered),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.asarray(json.loads(out.read_text())["predictions"], dtype=float)
    np.testing.assert_allclose(got, mlfolio_scores, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def mlflow_serve(registered, tmp_path_factory) -> Iterator[str]:
    """``mlflow models serve`` on the champion, on a free loopback port (~20 s to start)."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-serve") / "serve.log"
    args = ["models", "serve", "-m", CHAMPION, "--env-manager", "local"]
    proc = _spawn(
        [str(BIN / "mlflow"), *args, "-h", "127.0.0.1", "-p", str(port)],
        _cli_env(registered),
        log,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _served(url: str, content: str | bytes, content_type: str) -> np.ndarray:
    resp = httpx.post(
        f"{url}/invocations", content=content, headers={"Content-Type": content_type}, timeout=60
    )
    assert resp.status_code == 200, resp.text[-2000:]
    return np.asarray(resp.json()["predictions"], dtype=float)


def test_mlflow_models_serve_takes_raw_and_typed_json(mlflow_serve, raw_csv, mlfolio_scores):
    rows = read_rows(raw_csv)
    raw_split = json.loads(rows.to_json(orient="split", index=False))  # ints stay ints
    got = _served(mlflow_serve, json.dumps({"dataframe_split": raw_split}), "application/json")
    np.testing.assert_allclose(got, mlfolio_scores, rtol=0, atol=1e-9)
    raw_records = json.loads(rows.to_json(orient="records"))  # blank text stays text
    got = _served(mlflow_serve, json.dumps({"dataframe_records": raw_records}), "application/json")
    np.testing.assert_allclose(got, mlfolio_scores, rtol=0, atol=1e-9)
    typed = json.loads(typed_rows(rows).to_json(orient="records"))  # NaN → null
    got = _served(mlflow_serve, json.dumps({"dataframe_records": typed}), "application/json")
    np.testing.assert_allclose(got, mlfolio_scores, rtol=0, atol=1e-9)


def test_mlflow_models_serve_refuses_csv_bodies_for_any_typed_columns(mlflow_serve, raw_csv):
    """MLflow 3.17's scoring server reads a text/csv body with the signature's pandas
    dtypes, which ``Any`` columns have none of (``Schema.pandas_types``): it answers 400
    before the model sees a row. The README sends CSV to ``mlfolio serve`` or ``mlflow
    models predict -t csv``; when MLflow lifts this, this test fails: say so there."""
    resp = httpx.post(
        f"{mlflow_serve}/invocations",
        content=raw_csv.read_bytes(),
        headers={"Content-Type": "text/csv"},
        timeout=60,
    )
    assert resp.status_code == 400
    assert "pandas types" in resp.json()["message"]
