"""The AWS targets: the Lambda handler, the Lambda package and its rollout, the SageMaker
archive and its rollout.

A small real model (logistic regression on 600 Telco rows) is logged and registered in a
temporary SQLite MLflow store. moto cannot run Lambda code without Docker (there is none
here, and its ``invoke`` then only echoes the payload), so the handler is tested directly
with real API Gateway REST (v1) and HTTP API (v2) event shapes, and once from the extracted
deployment zip in a fresh interpreter. The deploy calls go through boto3 to a real moto
server on 127.0.0.1 with dummy credentials and an IAM role created on it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, lambda_handler, registry, tracking
from mlfolio.deploy import DeployError
from mlfolio.deploy.aws_lambda import build_package, deploy_lambda
from mlfolio.deploy.sagemaker import (
    build_model_archive,
    deploy_sagemaker,
    serverless_memory_mb,
    wait_for_endpoint,
)

from .conftest import CHURN_CSV, CHURN_PARAMS

MODEL_NAME = "churn-aws"
REGION = "us-east-1"
ACCOUNT = "123456789012"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlfolio-serve:1"
FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs"]


# -- the model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """A fitted pipeline logged and registered (version 1, threshold tag 0.3)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    cfg = config.load(CHURN_PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema).head(600)
    X, y = features.xy(df, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=500))
    model.fit(X, y)
    exp = MlflowClient().create_experiment(
        "deploy-aws", artifact_location=(folder / "artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=exp) as run:
        model_uri = tracking.log_model(model, X, schema=cfg.schema)
    ref = registry.register(
        MODEL_NAME, model_uri, run.info.run_id, {"mlfolio.threshold": "0.300000"}
    )
    model_dir = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(folder / "model"))
    )
    rows = X.iloc[78:90].reset_index(drop=True)  # row 83 has a blank totalcharges
    assert (rows["totalcharges"].str.strip() == "").any()
    try:
        yield SimpleNamespace(
            model=model,
            X=X,
            rows=rows,
            ref=ref,
            model_dir=model_dir,
            expected=model.predict_proba(rows)[:, 1],
            tracking_uri=uri,
        )
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def served(store, monkeypatch) -> SimpleNamespace:
    """The handler pointed at the logged model directory (no model.json: threshold 0.5)."""
    monkeypatch.setenv("MODEL_DIR", str(store.model_dir))
    monkeypatch.delenv("MODEL_THRESHOLD", raising=False)
    return store


# -- API Gateway events -----------------------------------------------------------------------
def v1_event(
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    b64: bool = False,
) -> dict[str, Any]:
    """A REST API (payload 1.0) Lambda proxy event, as API Gateway sends it."""
    headers = {
        "Accept": "*/*",
        "Host": "abc123.execute-api.us-east-1.amazonaws.com",
        **(headers or {}),
    }
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "x1y2z3",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": f"/prod{path}",
            "stage": "prod",
            "accountId": ACCOUNT,
            "apiId": "abc123",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": 1764248400000,
            "identity": {"sourceIp": "203.0.113.7"},
        },
        "body": body,
        "isBase64Encoded": b64,
    }


def v2_event(
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    b64: bool = False,
    stage: str = "$default",
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event; a named stage prefixes rawPath."""
    raw_path = path if stage == "$default" else f"/{stage}{path}"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": "",
        "headers": {
            "accept": "*/*",
            "host": "abc123.execute-api.us-east-1.amazonaws.com",
            **{k.lower(): v for k, v in (headers or {}).items()},
        },
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": stage,
            "time": "27/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1764244800000,
        },
        "body": body,
        "isBase64Encoded": b64,
    }


EVENTS = {"v1": v1_event, "v2": v2_event}


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    resp = lambda_handler.handler(event, None)
    assert set(resp) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert resp["isBase64Encoded"] is False and isinstance(resp["body"], str)
    assert resp["headers"]["Content-Type"] == "application/json"
    return resp["statusCode"], json.loads(resp["body"]), resp["headers"]


def records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return rows.to_dict(orient="records")  # native Python values, full float precision


def payload(fmt: str, rows: pd.DataFrame) -> dict[str, Any]:
    if fmt == "dataframe_split":
        return {fmt: {"columns": list(rows.columns), "data": rows.values.tolist()}}
    if fmt == "inputs":  # columnar
        return {fmt: {c: rows[c].tolist() for c in rows.columns}}
    return {fmt: records(rows)}


def post(version: str, doc: Any, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = doc if isinstance(doc, str) else json.dumps(doc)
    return call(
        EVENTS[version]("POST", "/invocations", body, {"Content-Type": "application/json"}, **kw)
    )


def assert_predictions(answer: dict[str, Any], expected: np.ndarray, threshold: float) -> None:
    """The server's /invocations answer: both class probabilities, labels, threshold."""
    assert set(answer) == {"predictions", "labels", "threshold", "request_id"}
    got = np.asarray(answer["predictions"])
    assert got.shape == (len(expected), 2)
    np.testing.assert_allclose(got[:, 1], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert answer["labels"] == [int(p >= threshold) for p in expected]
    assert answer["threshold"] == threshold


# -- the handler ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ping(served, version):
    status, body, _ = call(EVENTS[version]("GET", "/ping"))
    assert status == 200
    assert body == {"status": "ok", "model_version": None, "threshold": 0.5}


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_invocations_json_formats(served, version, fmt):
    status, body, _ = post(version, payload(fmt, served.rows))
    assert status == 200, body
    assert_predictions(body, served.expected, 0.5)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_invocations_csv_base64(served, version, header):
    text = served.rows.to_csv(index=False, header=header)
    event = EVENTS[version](
        "POST",
        "/invocations",
        base64.b64encode(text.encode()).decode(),
        {"Content-Type": "text/csv; charset=utf-8"},
        b64=True,
    )
    status, body, _ = call(event)
    assert status == 200, body
    assert_predictions(body, served.expected, 0.5)


def test_csv_columns_in_any_order(served):
    rows = served.rows[list(reversed(served.rows.columns))]
    status, body, _ = call(
        v2_event("POST", "/invocations", rows.to_csv(index=False), {"content-type": "text/csv"})
    )
    assert status == 200, body
    assert_predictions(body, served.expected, 0.5)


def test_base64_json_and_named_stage(served):
    doc = json.dumps(payload("dataframe_split", served.rows)).encode()
    event = v2_event(
        "POST",
        "/invocations",
        base64.b64encode(doc).decode(),
        {"content-type": "application/json"},
        b64=True,
        stage="prod",
    )
    assert event["rawPath"] == "/prod/invocations"
    status, body, _ = call(event)
    assert status == 200, body
    assert_predictions(body, served.expected, 0.5)


def test_missing_values_and_threshold_from_env(served, monkeypatch):
    monkeypatch.setenv("MODEL_THRESHOLD", "0.2")
    rows = records(served.rows.head(3))
    rows[0]["seniorcitizen"] = None  # a missing 0/1 flag stays categorical, not 0.0/1.0
    rows[1]["monthlycharges"] = None
    rows[2]["contract"] = None
    expected_rows = served.rows.head(3).astype(object)
    expected_rows.loc[0, "seniorcitizen"] = None
    expected_rows.loc[1, "monthlycharges"] = np.nan
    expected_rows.loc[2, "contract"] = None
    expected = served.model.predict_proba(
        expected_rows.astype({"tenure": "int64", "monthlycharges": "float64"})
    )[:, 1]
    status, body, _ = post("v1", {"dataframe_records": rows})
    assert status == 200, body
    assert_predictions(body, expected, 0.2)
    assert call(v1_event("GET", "/ping"))[1]["threshold"] == 0.2


def _drop(rows, col):
    return [{k: v for k, v in r.items() if k != col} for r in records(rows)]


def _set(rows, col, value, at=0):
    out = records(rows)
    out[at][col] = value
    return out


BAD_JSON = [
    (
        "missing-column",
        lambda r: {"dataframe_records": _drop(r, "tenure")},
        "missing column 'tenure' in dataframe_records[0]",
    ),
    (
        "unknown-column",
        lambda r: {"instances": [{**x, "shoe_size": 44} for x in records(r)]},
        "unknown column(s) ['shoe_size'] in instances[0]",
    ),
    ("malformed-json", lambda r: '{"dataframe_records": [{"tenure": 1,', "malformed JSON body"),
    ("not-an-object", lambda r: [1, 2], "must be a JSON object"),
    ("unknown-format", lambda r: {"rows": records(r)}, "got keys ['rows']"),
    ("no-format", lambda r: {}, "exactly one of the keys"),
    (
        "two-formats",
        lambda r: {**payload("instances", r), **payload("inputs", r)},
        "got keys ['inputs', 'instances']",
    ),
    (
        "number-column-text",
        lambda r: {"dataframe_records": _set(r, "tenure", "twelve", 2)},
        "column 'tenure': expected a number",
    ),
    (
        "double-column-bool",
        lambda r: {"dataframe_records": _set(r, "monthlycharges", True)},
        "got boolean true in row 0",
    ),
    (
        "string-column-array",
        lambda r: {"dataframe_records": _set(r, "contract", [2])},
        "column 'contract': expected a string",
    ),
    (
        "numeric-text",
        lambda r: {"dataframe_records": _set(r, "totalcharges", "lots")},
        "column 'totalcharges': expected a number",
    ),
    (
        "split-short-row",
        lambda r: {
            "dataframe_split": {
                "columns": list(r.columns),
                "data": [list(records(r)[0].values())[:-1]],
            }
        },
        "dataframe_split.data[0]: expected a list of 19 values",
    ),
    (
        "split-no-columns",
        lambda r: {"dataframe_split": {"data": r.values.tolist()}},
        "dataframe_split: expected an object with 'columns'",
    ),
    (
        "inputs-ragged",
        lambda r: {"inputs": {**payload("inputs", r)["inputs"], "tenure": [1]}},
        "columns of different lengths in inputs",
    ),
    ("empty-records", lambda r: {"dataframe_records": []}, "no rows in dataframe_records"),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("make, message", [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_bad_json_is_400_naming_the_field(served, version, make, message):
    status, body, _ = post(version, make(served.rows))
    assert status == 400, body
    assert body["error_code"] == "BAD_REQUEST"
    assert message in body["message"], body["message"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("tenure,shoe_size\n1,44\n", "unknown column(s) ['shoe_size']"),
        ("x,y\n", "is not a row of 20 values"),
        ("", "empty CSV"),
    ],
    ids=["unknown-header", "headerless-wrong-width", "empty"],
)
def test_bad_csv_is_400(served, text, message):
    status, body, _ = call(v1_event("POST", "/invocations", text, {"Content-Type": "text/csv"}))
    assert status == 400, body
    assert message in body["message"], body["message"]


def test_csv_wrong_type_names_column_and_row(served):
    rows = served.rows.head(3).copy()
    rows["tenure"] = rows["tenure"].astype(object)
    rows.loc[1, "tenure"] = "soon"
    status, body, _ = call(
        v1_event("POST", "/invocations", rows.to_csv(index=False), {"Content-Type": "text/csv"})
    )
    assert status == 400
    assert "column 'tenure'" in body["message"]
    assert "got string 'soon' in row 1" in body["message"]


def test_bad_base64_and_media_type(served):
    status, body, _ = call(
        v1_event(
            "POST",
            "/invocations",
            "%%% not base64 %%%",
            {"Content-Type": "application/json"},
            b64=True,
        )
    )
    assert status == 400 and "body: isBase64Encoded" in body["message"]
    assert "not valid base64" in body["message"]
    status, body, _ = call(
        v2_event("POST", "/invocations", "<rows/>", {"content-type": "application/xml"})
    )
    assert status == 415 and "Content-Type 'application/xml'" in body["message"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_unknown_route_and_wrong_method(served, version):
    status, body, _ = call(EVENTS[version]("GET", "/predict"))
    assert status == 404 and "no route GET /predict" in body["message"]
    status, body, headers = call(EVENTS[version]("GET", "/invocations"))
    assert status == 405 and headers["Allow"] == "POST"


def test_model_missing_is_503_naming_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    status, body, _ = call(v2_event("GET", "/ping"))
    assert status == 503 and str(tmp_path) in body["message"] and "MODEL_DIR" in body["message"]


def test_direct_invoke(served):
    answer = lambda_handler.handler(payload("dataframe_records", served.rows), None)
    assert_predictions(answer, served.expected, 0.5)
    assert "'nope'" in lambda_handler.handler({"nope": 1}, None)["message"]


# -- the same contract as mlfolio serve -------------------------------------------------------
@pytest.fixture(scope="module")
def server(store) -> Iterator[Any]:
    """``mlfolio serve`` on the same registered version, threshold tag 0.3."""
    from .servers import Registered, start_server, stop_server

    registry.set_alias(store.ref, registry.CHAMPION, "lambda parity test")
    running = start_server(
        Registered(store.tracking_uri, {}, store.X, pd.Series()), name=MODEL_NAME
    )
    try:
        yield running
    finally:
        stop_server(running.proc)


def client_rows() -> pd.DataFrame:
    """Rows of the raw CSV as a client holds them (pandas.read_csv: the id column, ints,
    totalcharges a number), and a new customer's blank totalcharges."""
    raw = pd.read_csv(CHURN_CSV).drop(columns=["churn"])
    rows = raw[raw["totalcharges"].str.strip() != ""].head(5).copy()
    rows["totalcharges"] = rows["totalcharges"].astype(float)
    blank = raw[raw["totalcharges"].str.strip() == ""].head(1)
    return pd.concat([rows.astype({"totalcharges": object}), blank], ignore_index=True)


def parity_body(protocol: str, rows: pd.DataFrame) -> tuple[str, str]:
    if protocol == "csv":
        return rows.to_csv(index=False), "text/csv"
    if protocol == "unknown-column":
        return json.dumps({"dataframe_records": records(rows.assign(foo=1))}), "application/json"
    split = rows.to_dict(orient="split")
    return json.dumps(
        {
            protocol: {
                "dataframe_split": {"columns": split["columns"], "data": split["data"]},
                "dataframe_records": records(rows),
                "instances": records(rows),
                "inputs": {c: rows[c].tolist() for c in rows.columns},
            }[protocol]
        }
    ), "application/json"


@pytest.mark.parametrize("accept", ["application/json", "text/csv"])
@pytest.mark.parametrize("protocol", [*FORMATS, "csv", "unknown-column"])
def test_the_handler_answers_like_the_server(server, served, monkeypatch, protocol, accept):
    import httpx

    monkeypatch.setenv("MODEL_THRESHOLD", "0.3")  # the version's tag, which the server uses
    body, media = parity_body(protocol, client_rows())
    headers = {"Content-Type": media, "Accept": accept, "X-Request-ID": f"parity-{protocol}"}
    expected = httpx.post(f"{server.url}/invocations", content=body, headers=headers, timeout=30)
    for version in ("v1", "v2"):
        resp = lambda_handler.handler(EVENTS[version]("POST", "/invocations", body, headers))
        assert resp["statusCode"] == expected.status_code, resp["body"]
        assert resp["headers"]["X-Request-ID"] == expected.headers["x-request-id"]
        if expected.headers["content-type"].startswith("text/csv"):
            assert resp["headers"]["Content-Type"] == "text/csv"
            assert resp["body"] == expected.text
        else:
            assert json.loads(resp["body"]) == expected.json()
    if protocol == "unknown-column":
        assert expected.status_code == 400 and "foo" in expected.json()["message"]
    else:
        assert expected.status_code == 200, expected.text


# -- the deployment package -------------------------------------------------------------------
@pytest.fixture(scope="module")
def package(store, tmp_path_factory) -> Path:
    return build_package(store.ref.uri, tmp_path_factory.mktemp("lambda-package"))


def test_package_contents(package, store, tmp_path):
    assert package.name == "mlfolio-lambda-v1.zip"
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("mlfolio/model.json"))
        reqs = zf.read("requirements.txt").decode().split()
        modes = {i.external_attr >> 16 for i in zf.infolist()}
    assert {
        "mlfolio/__init__.py",
        "mlfolio/lambda_handler.py",
        "mlfolio/features.py",
        "mlfolio/model/MLmodel",
        "mlfolio/model/model.pkl",
        "requirements.txt",
    } <= names
    model_files = {
        p.relative_to(store.model_dir).as_posix() for p in store.model_dir.rglob("*") if p.is_file()
    }
    assert {
        n.removeprefix("mlfolio/model/") for n in names if n.startswith("mlfolio/model/")
    } == model_files
    assert not any("__pycache__" in n for n in names)
    assert modes == {0o644}
    assert meta == {"model_uri": f"models:/{MODEL_NAME}/1", "model_version": "1", "threshold": 0.3}
    sklearn = importlib.metadata.version("scikit-learn")
    assert f"scikit-learn=={sklearn}" in reqs and any(r.startswith("pydantic==") for r in reqs)
    assert (package.parent / "requirements.txt").read_text().split() == reqs
    dockerfile = (package.parent / "Dockerfile").read_text()
    assert "FROM public.ecr.aws/lambda/python:3.11" in dockerfile
    assert f"COPY {package.name} " in dockerfile
    assert 'CMD ["mlfolio.lambda_handler.handler"]' in dockerfile
    # reproducible: the same model gives the same bytes (so the same CodeSha256)
    again = [build_package(store.model_dir, tmp_path / d) for d in ("a", "b")]
    assert again[0].read_bytes() == again[1].read_bytes()


RUN_EXTRACTED = """
import json, sys
import mlfolio.lambda_handler as h
events = json.load(sys.stdin)
print(json.dumps({"file": h.__file__, "answers": [h.handler(e, None) for e in events]}))
"""


def test_handler_runs_from_the_extracted_package(package, store, tmp_path):
    task_root = tmp_path / "var-task"
    subprocess.run(
        [sys.executable, "-m", "zipfile", "-e", str(package), str(task_root)], check=True
    )  # as the Dockerfile unpacks it
    events = [
        v1_event("GET", "/ping"),
        v2_event(
            "POST",
            "/invocations",
            json.dumps(payload("instances", store.rows)),
            {"content-type": "application/json"},
        ),
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODEL_DIR", "MODEL_THRESHOLD", "MLFLOW_TRACKING_URI")
    }
    env["PYTHONPATH"] = str(task_root)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_EXTRACTED],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve() == (task_root / "mlfolio/lambda_handler.py").resolve()
    ping, scored = out["answers"]
    assert ping["statusCode"] == 200
    assert json.loads(ping["body"]) == {"status": "ok", "model_version": "1", "threshold": 0.3}
    assert scored["statusCode"] == 200 and scored["headers"]["X-Model-Version"] == "1"
    assert_predictions(json.loads(scored["body"]), store.expected, 0.3)


# -- moto ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_update_endpoint() -> Iterator[None]:
    """moto 5.2.5 does not implement SageMaker UpdateEndpoint (it answers 500). Until it
    does, the in-process server gets the missing action: check both names, switch the
    endpoint to the new configuration, leave the old one in place."""
    from moto.core.responses import ActionResult
    from moto.sagemaker.responses import SageMakerResponse

    if hasattr(SageMakerResponse, "update_endpoint"):
        yield
        return

    def update_endpoint(self: Any) -> Any:
        backend = self.sagemaker_backend
        name = self._get_param("EndpointName")
        backend.describe_endpoint(name)  # ValidationException when it does not exist
        config = backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
        endpoint = backend.endpoints[name]
        endpoint.endpoint_config_name = config["EndpointConfigName"]
        endpoint.production_variants = endpoint._process_production_variants(
            config["ProductionVariants"]
        )
        return ActionResult({"EndpointArn": endpoint.arn})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SageMakerResponse, "update_endpoint", update_endpoint, raising=False)
        yield


@pytest.fixture(scope="module")
def moto_endpoint(moto_url) -> Iterator[str]:
    """conftest's moto server (in this process), with UpdateEndpoint added."""
    with moto_update_endpoint():
        yield moto_url


@pytest.fixture
def aws(moto_endpoint, monkeypatch) -> SimpleNamespace:
    """Dummy credentials, the moto server, and an IAM role on it."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_LAMBDA",
        "AWS_ENDPOINT_URL_SAGEMAKER",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=moto_endpoint)

    iam = client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Principal": {"Service": ["lambda.amazonaws.com", "sagemaker.amazonaws.com"]},
            }
        ],
    }
    try:
        role_arn = iam.get_role(RoleName="mlfolio-deploy")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        role_arn = iam.create_role(
            RoleName="mlfolio-deploy", AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]
    return SimpleNamespace(endpoint=moto_endpoint, role_arn=role_arn, client=client)


def new_bucket(aws: SimpleNamespace) -> str:
    bucket = f"mlfolio-{uuid.uuid4().hex[:8]}"
    aws.client("s3").create_bucket(Bucket=bucket)
    return bucket


def alias_version(lam: Any, function_name: str, alias: str) -> str | None:
    try:
        return lam.get_alias(FunctionName=function_name, Name=alias)["FunctionVersion"]
    except lam.exceptions.ResourceNotFoundException:
        return None


def published(lam: Any, function_name: str) -> list[str]:
    versions = lam.list_versions_by_function(FunctionName=function_name)["Versions"]
    return [v["Version"] for v in versions if v["Version"] != "$LATEST"]


# -- Lambda rollout -----------------------------------------------------------------------------
def test_deploy_lambda_creates_then_updates(aws, package):
    lam = aws.client("lambda")
    kw = {
        "function_name": "churn-a",
        "role_arn": aws.role_arn,
        "region": REGION,
        "endpoint_url": aws.endpoint,
        "memory_mb": 512,
        "timeout_s": 20,
    }
    first = deploy_lambda(package, model_version=1, **kw)
    assert first["created"] and first["version"] == "1"
    assert first["previous_live_version"] is None and first["package_type"] == "Zip"
    assert first["function_arn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:churn-a"
    assert first["aliases"] == {
        "model-v1": f"{first['function_arn']}:model-v1",
        "live": f"{first['function_arn']}:live",
    }
    conf = lam.get_function_configuration(FunctionName="churn-a")
    assert (conf["Handler"], conf["Runtime"], conf["MemorySize"], conf["Timeout"]) == (
        "mlfolio.lambda_handler.handler",
        "python3.11",
        512,
        20,
    )
    assert (
        conf["CodeSha256"]
        == base64.b64encode(hashlib.sha256(package.read_bytes()).digest()).decode()
    )
    assert alias_version(lam, "churn-a", "live") == "1"

    # an operator's setting survives the next deploy
    lam.update_function_configuration(
        FunctionName="churn-a",
        Environment={"Variables": {**conf["Environment"]["Variables"], "MODEL_THRESHOLD": "0.4"}},
    )
    second = deploy_lambda(package, model_version=2, **kw)
    assert not second["created"] and second["version"] == "2"
    assert second["previous_live_version"] == "1"
    assert {a: alias_version(lam, "churn-a", a) for a in ("live", "model-v2", "model-v1")} == {
        "live": "2",
        "model-v2": "2",
        "model-v1": "1",
    }  # model-v1 stays: the rollback target
    assert published(lam, "churn-a") == ["1", "2"]
    env = lam.get_function_configuration(FunctionName="churn-a")["Environment"]["Variables"]
    assert env == {"MLFOLIO_MODEL_VERSION": "2", "MODEL_THRESHOLD": "0.4"}


def test_deploy_lambda_missing_code_bucket_keeps_live(aws, package):
    lam = aws.client("lambda")
    bucket = new_bucket(aws)
    kw = {"function_name": "churn-b", "role_arn": aws.role_arn, "endpoint_url": aws.endpoint}
    first = deploy_lambda(package, model_version=1, code_bucket=bucket, **kw)
    key = f"churn-b/v1/{package.name}"
    assert first["code"] == f"s3://{bucket}/{key}"
    assert (
        aws.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"]
        == package.stat().st_size
    )

    with pytest.raises(DeployError) as info:
        deploy_lambda(package, model_version=2, code_bucket=f"{bucket}-gone", **kw)
    msg = str(info.value)
    assert f"s3 upload_file of {package.name} to s3://{bucket}-gone/churn-b/v2/" in msg
    assert "NoSuchBucket" in msg
    assert alias_version(lam, "churn-b", "live") == "1"
    assert alias_version(lam, "churn-b", "model-v2") is None
    assert published(lam, "churn-b") == ["1"]


def test_deploy_lambda_bad_role_names_the_call(aws, package):
    lam = aws.client("lambda")
    with pytest.raises(DeployError) as info:
        deploy_lambda(
            package,
            function_name="churn-c",
            model_version=1,
            role_arn=f"arn:aws:iam::{ACCOUNT}:role/no-such-role",
            endpoint_url=aws.endpoint,
        )
    msg = str(info.value)
    assert "lambda create_function on function 'churn-c' failed" in msg
    assert "cannot be assumed" in msg
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="churn-c")


def test_deploy_lambda_image(aws):
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/churn-lambda:v1"
    result = deploy_lambda(
        image,
        function_name="churn-img",
        role_arn=aws.role_arn,
        model_version=1,
        endpoint_url=aws.endpoint,
    )
    assert result["package_type"] == "Image" and result["code"] == image
    fn = aws.client("lambda").get_function(FunctionName="churn-img")
    assert fn["Configuration"]["PackageType"] == "Image"
    assert fn["Code"]["ImageUri"] == image


def test_deploy_lambda_package_not_found(aws, tmp_path):
    with pytest.raises(DeployError, match=r"lambda package .*nope\.zip not found"):
        deploy_lambda(
            tmp_path / "nope.zip",
            function_name="x",
            role_arn=aws.role_arn,
            model_version=1,
            endpoint_url=aws.endpoint,
        )


# -- SageMaker ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive(store, tmp_path_factory) -> Path:
    return build_model_archive(
        store.model_dir, tmp_path_factory.mktemp("sagemaker") / "model.tar.gz"
    )


def test_model_archive_layout(archive, store, tmp_path):
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        tar.extractall(tmp_path / "opt/ml/model", filter="data")  # where SageMaker unpacks
    names = [m.name for m in members]
    assert "MLmodel" in names and "model.pkl" in names  # at the root, no model/ prefix
    assert names == sorted(names) and all(m.mtime == 0 and m.uid == 0 for m in members)
    loaded = mlflow.sklearn.load_model(str(tmp_path / "opt/ml/model"))
    np.testing.assert_array_equal(loaded.predict_proba(store.rows)[:, 1], store.expected)
    # from the registry URI: the same files, so the same bytes
    from_uri = build_model_archive(store.ref.uri, tmp_path / "again" / "model.tar.gz")
    assert from_uri.read_bytes() == archive.read_bytes()


def test_deploy_sagemaker_creates_then_updates(aws, archive):
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    bucket = new_bucket(aws)
    kw = {
        "endpoint_name": "churn-ep",
        "image_uri": IMAGE,
        "role_arn": aws.role_arn,
        "bucket": bucket,
        "endpoint_url": aws.endpoint,
        "instance_type": "ml.m5.large",
        "poll_s": 0.1,
        "wait_timeout_s": 30,
    }
    first = deploy_sagemaker(archive, model_version=1, **kw)
    assert first["created"] and first["endpoint_status"] == "InService"
    assert first["status"] == "deployed"
    assert first["previous_endpoint_config_name"] is None
    assert first["endpoint_config_name"].startswith("churn-ep-v1-")
    key = first["model_data_url"].removeprefix(f"s3://{bucket}/")
    assert key.startswith("churn-ep/model-v1-") and key.endswith("/model.tar.gz")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == archive.read_bytes()
    model = sm.describe_model(ModelName=first["model_name"])
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == first["model_data_url"]
    assert model["ExecutionRoleArn"] == aws.role_arn
    variant = sm.describe_endpoint_config(EndpointConfigName=first["endpoint_config_name"])[
        "ProductionVariants"
    ][0]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        first["model_name"],
        "ml.m5.large",
        1,
    )
    assert (
        sm.describe_endpoint(EndpointName="churn-ep")["EndpointConfigName"]
        == first["endpoint_config_name"]
    )

    second = deploy_sagemaker(archive, model_version=2, **kw)
    assert not second["created"]
    assert second["previous_endpoint_config_name"] == first["endpoint_config_name"]
    assert second["endpoint_config_name"].startswith("churn-ep-v2-")
    assert "/model-v2-" in second["model_data_url"]
    assert (
        sm.describe_endpoint(EndpointName="churn-ep")["EndpointConfigName"]
        == second["endpoint_config_name"]
    )
    # blue/green: the old configuration and model stay, for a rollback
    sm.describe_endpoint_config(EndpointConfigName=first["endpoint_config_name"])
    sm.describe_model(ModelName=first["model_name"])


def test_deploy_sagemaker_missing_bucket_keeps_endpoint(aws, archive):
    sm = aws.client("sagemaker")
    bucket = new_bucket(aws)
    kw = {
        "endpoint_name": "churn-ep2",
        "image_uri": IMAGE,
        "role_arn": aws.role_arn,
        "endpoint_url": aws.endpoint,
        "poll_s": 0.1,
        "wait_timeout_s": 30,
    }
    first = deploy_sagemaker(archive, model_version=1, bucket=bucket, **kw)
    with pytest.raises(DeployError) as info:
        deploy_sagemaker(archive, model_version=2, bucket=f"{bucket}-gone", **kw)
    msg = str(info.value)
    assert f"s3 upload_file of model.tar.gz to s3://{bucket}-gone/churn-ep2/model-v2-" in msg
    assert "NoSuchBucket" in msg
    assert (
        sm.describe_endpoint(EndpointName="churn-ep2")["EndpointConfigName"]
        == first["endpoint_config_name"]
    )
    configs = sm.list_endpoint_configs(NameContains="churn-ep2")["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == [first["endpoint_config_name"]]


def test_wait_for_endpoint_detects_a_rollback(aws, archive):
    """SageMaker rolls a failed update back: InService, but on the old configuration."""
    sm = aws.client("sagemaker")
    first = deploy_sagemaker(
        archive,
        model_version=1,
        bucket=new_bucket(aws),
        endpoint_name="churn-ep3",
        image_uri=IMAGE,
        role_arn=aws.role_arn,
        endpoint_url=aws.endpoint,
        poll_s=0.1,
    )
    with pytest.raises(DeployError) as info:
        wait_for_endpoint(sm, "churn-ep3", "churn-ep3-v2-new", timeout_s=5, poll_s=0.1)
    assert (
        f"sagemaker endpoint 'churn-ep3' rolled back to {first['endpoint_config_name']} "
        "instead of churn-ep3-v2-new"
    ) in str(info.value)


def test_deploy_stage_ships_lambda_and_sagemaker(aws, store, tmp_path):
    """The deploy stage's own dispatch, with both AWS targets, against the moto server."""
    from mlfolio import stages
    from mlfolio.context import StageContext

    registry.set_alias(store.ref, registry.CHAMPION, "deploy stage test")
    raw = yaml.safe_load(CHURN_PARAMS.read_text())
    raw["registry"] = {"model_name": MODEL_NAME}
    raw["deploy"] = {
        "targets": ["lambda", "sagemaker"],
        "aws": {
            "region": REGION,
            "endpoint_url": aws.endpoint,
            "role_arn": aws.role_arn,
            "bucket": new_bucket(aws),
        },
        "lambda": {"function_name": "stage-fn"},
        "sagemaker": {
            "endpoint_name": "stage-ep",
            "image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/serve:1",
        },
    }
    cfg = config.from_mapping(raw)
    ctx = StageContext(stage="deploy", cfg=cfg, run_dir=tmp_path)
    with mlflow.start_run():
        result = stages.deploy_model(ctx)
    targets = result["targets"]
    assert {t: r["status"] for t, r in targets.items()} == {
        "lambda": "deployed",
        "sagemaker": "deployed",
    }
    recorded = json.loads((tmp_path / "deploy.json").read_text())
    assert recorded["version"] == store.ref.version and recorded["targets"] == targets
    lam = aws.client("lambda")
    assert alias_version(lam, "stage-fn", "live") is not None
    sm = aws.client("sagemaker")
    assert sm.describe_endpoint(EndpointName="stage-ep")["EndpointStatus"] == "InService"
    assert (tmp_path / "deploy/sagemaker/model.tar.gz").exists()


# -- SageMaker Serverless Inference -------------------------------------------------------------
def sm_kw(aws: SimpleNamespace, endpoint_name: str) -> dict[str, Any]:
    return {
        "endpoint_name": endpoint_name,
        "image_uri": IMAGE,
        "role_arn": aws.role_arn,
        "bucket": new_bucket(aws),
        "endpoint_url": aws.endpoint,
        "poll_s": 0.1,
        "wait_timeout_s": 30,
    }


def config_variant(sm: Any, config_name: str) -> dict[str, Any]:
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    return variant


def endpoint_configs(sm: Any, endpoint_name: str) -> list[str]:
    configs = sm.list_endpoint_configs(NameContains=endpoint_name)["EndpointConfigs"]
    return sorted(c["EndpointConfigName"] for c in configs)


@pytest.mark.parametrize("memory_mb", [1500, 7168, 512])
def test_serverless_sizes_are_refused_before_anything_is_created(aws, archive, memory_mb):
    """moto (as SageMaker) refuses a memory size that is not one of its six; ours is
    refused first, naming the key, before an archive is uploaded or a model created."""
    sm = aws.client("sagemaker")
    kw = sm_kw(aws, f"churn-bad-{memory_mb}")
    with pytest.raises(DeployError) as info:
        deploy_sagemaker(
            archive,
            model_version=1,
            serverless={"memory_mb": memory_mb, "max_concurrency": 5},
            **kw,
        )
    assert str(info.value) == (
        f"sagemaker serverless: memory_mb {memory_mb}: expected one of 1024, 2048, 3072, "
        "4096, 5120, 6144 (MB)"
    )
    assert aws.client("s3").list_objects_v2(Bucket=kw["bucket"]).get("KeyCount") == 0
    models = sm.list_models()["Models"]  # moto ignores NameContains here
    assert [m for m in models if m["ModelName"].startswith(kw["endpoint_name"])] == []
    assert endpoint_configs(sm, kw["endpoint_name"]) == []

    # what SageMaker's API (here moto's) answers to the same request without our check
    import botocore.exceptions

    with pytest.raises(
        (botocore.exceptions.ClientError, botocore.exceptions.ParamValidationError)
    ) as raw:
        sm.create_endpoint_config(
            EndpointConfigName=f"raw-{memory_mb}",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "any",
                    "ServerlessConfig": {"MemorySizeInMB": memory_mb, "MaxConcurrency": 5},
                }
            ],
        )
    if memory_mb < 1024:  # botocore refuses it client-side: below the API's minimum
        assert isinstance(raw.value, botocore.exceptions.ParamValidationError)
        assert "MemorySizeInMB" in str(raw.value)
    else:  # the others reach the API
        assert raw.value.response["Error"]["Code"] == "ValidationException"
        assert f"Value '{memory_mb}' at 'MemorySizeInMB' failed to satisfy constraint" in str(
            raw.value
        )


@pytest.mark.parametrize(
    ("serverless", "message"),
    [
        (
            {"memory_mb": 2048, "max_concurrency": 0},
            "max_concurrency 0: expected an integer in 1..200",
        ),
        ({"memory_mb": 2048, "max_concurrency": 201}, "max_concurrency 201: expected an integer"),
        ({"memory_mb": 2048}, "max_concurrency None: expected an integer in 1..200"),
        (
            {"memory_mb": 2048, "max_concurrency": 5, "provisioned_concurrency": 6},
            "provisioned_concurrency 6: expected 1..max_concurrency (5)",
        ),
        ({"memory_mb": True, "max_concurrency": 5}, "memory_mb True: expected one of 1024"),
    ],
)
def test_serverless_concurrency_is_checked(aws, archive, serverless, message):
    with pytest.raises(DeployError, match=re.escape(message)):
        deploy_sagemaker(archive, model_version=1, serverless=serverless, **sm_kw(aws, "churn-cc"))


def test_deploy_serverless_creates_updates_and_rolls_back(aws, archive):
    sm = aws.client("sagemaker")
    kw = sm_kw(aws, "churn-sl")
    first = deploy_sagemaker(
        archive, model_version=1, serverless={"memory_mb": 2048, "max_concurrency": 5}, **kw
    )
    assert first["created"] and first["status"] == "deployed"
    assert first["variant"] == {
        "kind": "serverless",
        "memory_mb": 2048,
        "max_concurrency": 5,
        "provisioned_concurrency": None,
    }
    assert first["previous_variant"] is None and first["rollback"] is None
    variant = config_variant(sm, first["endpoint_config_name"])
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    desc = sm.describe_endpoint(EndpointName="churn-sl")
    assert desc["EndpointStatus"] == "InService"
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"]["MemorySizeInMB"] == 2048

    # blue/green to a new configuration: more memory, two containers kept warm
    second = deploy_sagemaker(
        archive,
        model_version=2,
        serverless={"memory_mb": 3072, "max_concurrency": 10, "provisioned_concurrency": 2},
        **kw,
    )
    assert not second["created"]
    assert second["previous_endpoint_config_name"] == first["endpoint_config_name"]
    assert second["previous_variant"] == first["variant"]
    assert config_variant(sm, second["endpoint_config_name"])["ServerlessConfig"] == {
        "MemorySizeInMB": 3072,
        "MaxConcurrency": 10,
        "ProvisionedConcurrency": 2,
    }
    assert (
        sm.describe_endpoint(EndpointName="churn-sl")["EndpointConfigName"]
        == second["endpoint_config_name"]
    )
    assert second["rollback"] == {
        "endpoint_config_name": first["endpoint_config_name"],
        "possible": True,
        "command": "aws sagemaker update-endpoint --endpoint-name churn-sl "
        f"--endpoint-config-name {first['endpoint_config_name']}",
    }

    # the rollback deploy.json names: the old configuration and model were kept
    sm.update_endpoint(EndpointName="churn-sl", EndpointConfigName=first["endpoint_config_name"])
    back = wait_for_endpoint(
        sm, "churn-sl", first["endpoint_config_name"], timeout_s=10, poll_s=0.1
    )
    assert back["ProductionVariants"][0]["CurrentServerlessConfig"] == {
        "MemorySizeInMB": 2048,
        "MaxConcurrency": 5,
    }
    # ... and a deploy that SageMaker rolled back is a failure, not a success
    with pytest.raises(DeployError, match="rolled back to .* instead of "):
        wait_for_endpoint(sm, "churn-sl", second["endpoint_config_name"], timeout_s=5, poll_s=0.1)


def test_switching_between_instances_and_serverless(aws, archive):
    """Serverless to instances is an ordinary (blue/green) update, whose way back SageMaker
    does not offer; instances to serverless SageMaker refuses, so it is refused here first,
    the endpoint untouched; deleting the endpoint lets it be created serverless."""
    sm = aws.client("sagemaker")
    kw = sm_kw(aws, "churn-sw")
    serverless = {"memory_mb": 1024, "max_concurrency": 2}
    first = deploy_sagemaker(archive, model_version=1, serverless=serverless, **kw)
    second = deploy_sagemaker(archive, model_version=2, instance_type="ml.m5.large", **kw)
    assert second["previous_variant"]["kind"] == "serverless"
    assert second["variant"] == {
        "kind": "instances",
        "instance_type": "ml.m5.large",
        "instance_count": 1,
    }
    variant = config_variant(sm, second["endpoint_config_name"])
    assert "ServerlessConfig" not in variant and variant["InstanceType"] == "ml.m5.large"
    assert second["rollback"]["possible"] is False
    assert second["rollback"]["endpoint_config_name"] == first["endpoint_config_name"]
    assert "deleted and created again" in second["rollback"]["reason"]

    before = endpoint_configs(sm, "churn-sw")
    with pytest.raises(DeployError) as info:
        deploy_sagemaker(archive, model_version=3, serverless=serverless, **kw)
    assert str(info.value).startswith(
        f"sagemaker endpoint 'churn-sw' runs on instances (config "
        f"{second['endpoint_config_name']}); SageMaker cannot update an instance endpoint "
        "to Serverless Inference"
    )
    assert "aws sagemaker delete-endpoint --endpoint-name churn-sw" in str(info.value)
    assert endpoint_configs(sm, "churn-sw") == before
    assert (
        sm.describe_endpoint(EndpointName="churn-sw")["EndpointConfigName"]
        == second["endpoint_config_name"]
    )

    sm.delete_endpoint(EndpointName="churn-sw")
    third = deploy_sagemaker(archive, model_version=3, serverless=serverless, **kw)
    assert third["created"] and third["variant"]["kind"] == "serverless"
    desc = sm.describe_endpoint(EndpointName="churn-sw")
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"]["MemorySizeInMB"] == 1024


@pytest.mark.parametrize(
    ("peak", "chosen"), [(100, 1024), (819.2, 1024), (820, 2048), (2000, 3072), (4915.2, 6144)]
)
def test_serverless_memory_is_the_peak_plus_headroom_rounded_up(peak, chosen):
    sizing = serverless_memory_mb(peak)
    assert sizing["memory_mb"] == chosen and sizing["headroom"] == 0.25
    assert sizing["needed_mb"] == pytest.approx(peak * 1.25, abs=0.05)
    assert sizing["measured_peak_rss_mb"] == pytest.approx(peak, abs=0.05)
    assert sizing["reason"].endswith(f"rounded up to SageMaker's next size: {chosen} MB")


def test_serverless_memory_above_the_largest_size_is_refused():
    with pytest.raises(DeployError) as info:
        serverless_memory_mb(5000)
    assert str(info.value) == (
        "sagemaker serverless: memory_mb auto measured a peak of 5000 MB; with 25% headroom "
        "it needs 6250 MB, above Serverless Inference's largest size (6144 MB): serve it "
        "from instances (remove deploy.sagemaker.serverless) or make the model smaller"
    )
