"""mlfolio serve: a real uvicorn server on 127.0.0.1, started through the CLI, serving a
model registered in a temporary SQLite store, spoken to over HTTP (httpx, tritonclient)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlfolio import cli, config, data, features, registry, serve, tracking

from .conftest import CHURN_CSV, CHURN_PARAMS, require_module

MODEL = "churn-serve-test"
TOKEN = "s3cret-test-token"
THRESHOLD = 0.35
BODY_LIMIT = 64 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def auth() -> dict[str, str]:
    """A fresh header dict: tritonclient adds its own headers to the dict it is given."""
    return dict(AUTH)


@dataclass
class Registered:
    tracking_uri: str
    model: Any  # the fitted pipeline, in process
    X: pd.DataFrame  # raw feature rows of the whole Telco file
    run_id: str


@dataclass
class Server:
    url: str
    port: int
    log: list[str]


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    """A logistic regression on 1,000 Telco rows, logged, registered, aliased champion."""
    folder = tmp_path_factory.mktemp("serve")
    cfg = config.load(CHURN_PARAMS)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = cfg.model_copy(
        update={
            "tracking": cfg.tracking.model_copy(
                update={"tracking_uri": uri, "artifact_location": (folder / "artifacts").as_uri()}
            )
        }
    )
    df = data.validate(data.load_source(cfg.data), cfg.schema)
    X, y = features.xy(df, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=1000))
    model.fit(X.head(1000), y.head(1000))
    tracking.configure(cfg)
    try:
        with mlflow.start_run() as run:
            model_uri = tracking.log_model(model, X.head(1000), schema=cfg.schema)
        ref = registry.register(
            MODEL,
            model_uri,
            run.info.run_id,
            {
                "mlfolio.threshold": f"{THRESHOLD:.6f}",
                "mlfolio.data_hash": "abc123",
                "mlfolio.run_dir": "/runs/test",
            },
        )
        registry.set_alias(ref, registry.CHAMPION, "serve test")
    finally:
        mlflow.set_tracking_uri(None)
    return Registered(uri, model, X.reset_index(drop=True), run.info.run_id)


@pytest.fixture(scope="module")
def server(registered) -> Server:
    """``mlfolio serve`` in a subprocess on a free port, with a token and a 64 KiB limit."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlfolio.cli",
            "serve",
            "--model",
            f"models:/{MODEL}@champion",
            "--tracking-uri",
            registered.tracking_uri,
            "--port",
            "0",
            "--token",
            TOKEN,
            "--max-body-bytes",
            str(BODY_LIMIT),
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
    try:
        deadline = time.monotonic() + 60
        while not listening.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlfolio serve did not start:\n{''.join(log)}")
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", "".join(log)).group(1))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/ping", timeout=10).status_code == 200
        yield Server(url, port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def rows(registered: Registered, n: int = 20) -> pd.DataFrame:
    """``n`` raw rows, the first ones including blank totalcharges (new customers)."""
    X = registered.X
    blank = list(X.index[X["totalcharges"].astype(str).str.strip() == ""][: min(3, n)])
    others = [i for i in range(n + len(blank)) if i not in blank][: n - len(blank)]
    return X.loc[[*blank, *others]].reset_index(drop=True)


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.to_dict(orient="records")  # native Python scalars


def expected(registered: Registered, df: pd.DataFrame) -> np.ndarray:
    return registered.model.predict_proba(df)


def assert_answers(registered: Registered, df: pd.DataFrame, answer: dict[str, Any]) -> None:
    want = expected(registered, df)
    got = np.asarray(answer["predictions"])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert answer["labels"] == (want[:, 1] >= THRESHOLD).astype(int).tolist()
    assert answer["threshold"] == THRESHOLD


# -- health, probes, token ------------------------------------------------------------
def test_health_names_model_version_alias_run_and_data_hash(server, client, registered):
    health = client.get("/health").json()
    assert health["model"] == MODEL and health["version"] == "1"
    assert health["alias"] == "champion" and health["model_uri"] == f"models:/{MODEL}/1"
    assert health["run_id"] == registered.run_id
    assert health["data_hash"] == "abc123" and health["run_dir"] == "/runs/test"
    assert health["threshold"] == THRESHOLD
    assert health["scorer"] == "compiled", health["scorer_note"]
    assert health["columns"]["tenure"] == "double" and health["columns"]["gender"] == "string"
    assert health["id_column"] == "customerid"


def test_probes_are_open_everything_else_needs_the_token(server):
    for path in ("/ping", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(server.url + path).status_code == 200, path
    for method, path in (
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", "/invocations"),
        ("GET", f"/v2/models/{MODEL}"),
        ("POST", f"/v2/models/{MODEL}/infer"),
    ):
        missing = httpx.request(method, server.url + path)
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.request(method, server.url + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
    assert "Authorization" in httpx.get(server.url + "/health").json()["message"]
    assert (
        "invalid bearer token"
        in httpx.post(server.url + "/invocations", headers={"Authorization": "Bearer x"}).json()[
            "message"
        ]
    )
    assert "error" in httpx.get(f"{server.url}/v2/models/{MODEL}").json()


def test_cli_defaults_bind_loopback_on_sagemakers_port():
    args = cli._parser().parse_args(["serve", "--model", "models:/m@champion"])
    assert (args.host, args.port, args.token) == ("127.0.0.1", 8080, None)


def test_cli_reports_an_unknown_model_and_exits_1(registered, capsys):
    code = cli.main(
        [
            "serve",
            "--model",
            "models:/no-such-model@champion",
            "--tracking-uri",
            registered.tracking_uri,
            "--port",
            "0",
        ]
    )
    assert code == 1
    assert "no-such-model" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "churn@champion"]) == 1
    assert "models:/<name>@<alias>" in capsys.readouterr().err


# -- MLflow scoring protocol and SageMaker ---------------------------------------------
@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_mlflow_json_formats_match_the_pipeline(client, registered, fmt):
    df = rows(registered)
    split = df.to_dict(orient="split")
    payload = {
        "dataframe_split": {"columns": split["columns"], "data": split["data"]},
        "dataframe_records": records(df),
        "instances": records(df),
        "inputs": {c: df[c].tolist() for c in df.columns},
    }[fmt]
    resp = client.post("/invocations", json={fmt: payload})
    assert resp.status_code == 200, resp.text
    assert_answers(registered, df, resp.json())


def test_single_request_is_bit_identical_to_the_pipeline(client, registered):
    for i in (0, 1, 7):  # row 0 has a blank totalcharges
        df = rows(registered).iloc[[i]]
        answer = client.post("/invocations", json={"dataframe_records": records(df)}).json()
        assert answer["predictions"] == expected(registered, df).tolist()


@pytest.mark.parametrize("header", [True, False], ids=["header", "sagemaker-no-header"])
def test_csv_bodies_match_the_pipeline(client, registered, header):
    df = rows(registered)
    body = df.to_csv(index=False, header=header)
    if header:  # columns in another order are fine when named
        body = df[list(reversed(df.columns))].to_csv(index=False)
    resp = client.post(
        "/invocations", content=body, headers={"Content-Type": "text/csv; charset=utf-8"}
    )
    assert resp.status_code == 200, resp.text
    assert_answers(registered, df, resp.json())


def test_sagemaker_csv_answer(client, registered):
    df = rows(registered, 5)
    resp = client.post(
        "/invocations",
        content=df.to_csv(index=False, header=False),
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    lines = [line.split(",") for line in resp.text.strip().splitlines()]
    want = expected(registered, df)[:, 1]
    np.testing.assert_allclose([float(p) for p, _ in lines], want, rtol=0, atol=1e-12)
    assert [int(k) for _, k in lines] == (want >= THRESHOLD).astype(int).tolist()


# -- Open Inference Protocol through the real tritonclient ----------------------------
def triton_inputs(df: pd.DataFrame, binary: bool, columns: list[serve.Column]):
    from tritonclient.http import InferInput

    inputs = []
    for col in columns:
        values = df[col.name].to_numpy()
        if col.kind == "long":
            array, datatype = values.astype(np.int64), "INT64"
        elif col.kind == "double":  # blank totalcharges: NaN, a missing value
            text = df[col.name].astype("string").str.strip()
            array, datatype = pd.to_numeric(text, errors="coerce").to_numpy(np.float64), "FP64"
        else:
            array, datatype = np.array([str(v).encode() for v in values], dtype=object), "BYTES"
        tensor = InferInput(col.name, [len(df)], datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.fixture(scope="module")
def triton(server):
    tritonclient_http = require_module("tritonclient.http", "Triton's client speaks KServe V2")
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def columns(registered):
    return serve.load(f"models:/{MODEL}@champion", registered.tracking_uri).columns


def test_v2_health_metadata_and_readiness(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL, headers=auth())
    assert triton.is_model_ready(MODEL, "1", headers=auth())
    assert not triton.is_model_ready("other-model", headers=auth())
    assert not triton.is_model_ready(MODEL, "2", headers=auth())
    meta = triton.get_model_metadata(MODEL, headers=auth())
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert types["tenure"] == types["monthlycharges"] == types["totalcharges"] == "FP64"
    assert types["gender"] == types["seniorcitizen"] == "BYTES"
    assert [o["name"] for o in meta["outputs"]] == ["probability", "label"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_infer_with_tritonclient(triton, registered, columns, binary):
    from tritonclient.http import InferRequestedOutput

    df = rows(registered)
    outputs = [
        InferRequestedOutput("probability", binary_data=binary),
        InferRequestedOutput("label", binary_data=binary),
    ]
    result = triton.infer(
        MODEL, triton_inputs(df, binary, columns), outputs=outputs, headers=auth(), request_id="r-1"
    )
    want = expected(registered, df)[:, 1]
    np.testing.assert_allclose(result.as_numpy("probability"), want, rtol=0, atol=1e-12)
    assert result.as_numpy("label").tolist() == (want >= THRESHOLD).astype(int).tolist()
    response = result.get_response()
    assert response["model_name"] == MODEL and response["id"] == "r-1"


def test_v2_infer_default_outputs_and_versioned_route(triton, registered, columns):
    df = rows(registered, 4)
    result = triton.infer(
        MODEL, triton_inputs(df, True, columns), model_version="1", headers=auth()
    )  # no outputs named: all, binary
    np.testing.assert_allclose(
        result.as_numpy("probability"), expected(registered, df)[:, 1], rtol=0, atol=1e-12
    )


def test_v2_errors_name_the_field(triton, registered, columns):
    from tritonclient.http import InferInput
    from tritonclient.utils import InferenceServerException

    df = rows(registered, 3)
    inputs = triton_inputs(df, True, columns)
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(MODEL, inputs[1:], headers=auth())
    assert exc.value.status() == "400" and "tenure" in exc.value.message()

    wrong = InferInput("gender", [3], "FP64")
    wrong.set_data_from_numpy(np.array([1.5, 2.0, 3.0]), binary_data=False)
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(MODEL, [wrong, *(i for i in inputs if i.name() != "gender")], headers=auth())
    assert "gender" in exc.value.message() and "FP64" in exc.value.message()

    extra = InferInput("shoe_size", [3], "INT64")
    extra.set_data_from_numpy(np.array([40, 41, 42]), binary_data=True)
    with pytest.raises(InferenceServerException) as exc:
        triton.infer(MODEL, [*inputs, extra], headers=auth())
    assert "shoe_size" in exc.value.message()

    with pytest.raises(InferenceServerException) as exc:
        triton.infer("other-model", inputs, headers=auth())
    assert exc.value.status() == "404" and "other-model" in exc.value.message()


# -- bad requests ---------------------------------------------------------------------
def _one(registered: Registered, **changes: Any) -> dict[str, Any]:
    rec = records(rows(registered, 1))[0]
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    "case",
    [
        "malformed-json",
        "not-an-object",
        "no-format-key",
        "missing-column",
        "unknown-column",
        "wrong-type-number",
        "wrong-type-string",
        "text-in-number",
        "infinite",
        "ragged-split",
        "csv-bad-integer",
        "csv-unknown-column",
        "unsupported-content-type",
    ],
)
def test_bad_requests_get_a_message_naming_the_field(client, registered, case):
    rec = _one(registered)
    without = {k: v for k, v in rec.items() if k != "contract"}
    json_cases = {
        "missing-column": ({"dataframe_records": [rec, without]}, ["contract", "[1]"]),
        "unknown-column": ({"dataframe_records": [{**rec, "shoe_size": 42}]}, ["shoe_size"]),
        "wrong-type-number": (
            {"dataframe_records": [_one(registered, tenure="forty")]},
            ["tenure", "a number", "'forty'"],
        ),
        "wrong-type-string": (
            {"dataframe_records": [_one(registered, gender=[1])]},
            ["gender", "string", "an array"],
        ),
        "text-in-number": (
            {"dataframe_records": [_one(registered, totalcharges="N/A")]},
            ["totalcharges", "N/A"],
        ),
        "ragged-split": (
            {"dataframe_split": {"columns": list(rec), "data": [list(rec.values())[:-1]]}},
            ["dataframe_split.data[0]", "19 values"],
        ),
        "no-format-key": ({"records": [rec]}, ["dataframe_split", "records"]),
        "not-an-object": ([rec], ["JSON object"]),
    }
    headers: dict[str, str] = {"Content-Type": "application/json"}
    status = 400
    if case in json_cases:
        payload, words = json_cases[case]
        body = json.dumps(payload)
    elif case == "malformed-json":
        body, words = '{"dataframe_records": [{"tenure": 1,}', ["malformed JSON"]
    elif case == "infinite":
        body = json.dumps({"dataframe_records": [_one(registered, monthlycharges=123.456)]})
        body, words = body.replace("123.456", "Infinity"), ["monthlycharges", "finite"]
    elif case.startswith("csv"):
        df = rows(registered, 2)
        if case == "csv-bad-integer":
            df["tenure"] = ["12", "twelve"]
            words = ["tenure", "twelve", "row 1"]
        else:
            df = df.rename(columns={"gender": "sex"})
            words = ["sex"]
        body, headers = df.to_csv(index=False), {"Content-Type": "text/csv"}
    else:
        body, words, status = "{}", ["Content-Type", "text/plain"], 415
        headers = {"Content-Type": "text/plain"}
    resp = client.post("/invocations", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    message = resp.json()["message"]
    for word in words:
        assert word in message, (word, message)
    assert resp.json()["error_code"]
    assert client.get("/ping").status_code == 200


def test_oversize_bodies_get_413_with_or_without_content_length(client, registered):
    big = json.dumps({"dataframe_records": [_one(registered)] * 400})
    assert len(big) > BODY_LIMIT
    resp = client.post("/invocations", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and str(BODY_LIMIT) in resp.json()["message"]

    def chunks():
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096].encode()

    resp = client.post(
        "/invocations", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413 and str(BODY_LIMIT) in resp.json()["message"]
    v2 = client.post(f"/v2/models/{MODEL}/infer", content=big)
    assert v2.status_code == 413 and str(BODY_LIMIT) in v2.json()["error"]


def test_server_is_healthy_after_bad_input(client, registered):
    for body in (b"\xff\xfe", b"[", b'{"inputs": {"tenure": [[1]]}}', b'{"dataframe_split": 3}'):
        assert (
            client.post(
                "/invocations", content=body, headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
    assert client.post(f"/v2/models/{MODEL}/infer", content=b'{"inputs": 3}').status_code == 400
    assert (
        client.post(
            f"/v2/models/{MODEL}/infer",
            content=b"{}",
            headers={"Inference-Header-Content-Length": "999"},
        ).status_code
        == 400
    )
    df = rows(registered, 3)
    ok = client.post("/invocations", json={"dataframe_records": records(df)})
    assert ok.status_code == 200
    assert_answers(registered, df, ok.json())
    assert client.get("/health").json()["status"] == "ok"


# -- metrics and micro-batching ------------------------------------------------------
def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_batches_and_scores(client, registered):
    client.post("/invocations", json={"dataframe_records": records(rows(registered, 2))})
    client.post("/invocations", content=b"{", headers={"Content-Type": "application/json"})
    text = client.get("/metrics").text
    base = {"model": MODEL, "version": "1"}
    assert _metric(text, "mlfolio_requests_total", route="/invocations", status="200", **base) >= 1
    assert _metric(text, "mlfolio_requests_total", route="/invocations", status="400", **base) >= 1
    assert _metric(text, "mlfolio_request_duration_seconds_count", route="/invocations") >= 2
    assert _metric(text, "mlfolio_batch_rows_count", **base) >= 1
    assert _metric(text, "mlfolio_prediction_score_count", **base) >= 2
    assert _metric(text, "mlfolio_prediction_score_bucket", le="+Inf", **base) >= 2
    assert _metric(text, "mlfolio_predictions_total", **base) >= 2
    assert _metric(text, "mlfolio_model_info", alias="champion", scorer="compiled", **base) == 1
    assert _metric(text, "mlfolio_model_threshold", **base) == THRESHOLD


def test_concurrent_requests_are_batched_and_each_caller_gets_its_row(server, registered):
    df = registered.X.iloc[:64].reset_index(drop=True)
    want = expected(registered, df)

    async def burst() -> list[list[float]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            base_url=server.url, headers=AUTH, limits=limits, timeout=30
        ) as ac:

            async def one(i: int) -> list[float]:
                resp = await ac.post(
                    "/invocations", json={"dataframe_records": records(df.iloc[[i]])}
                )
                assert resp.status_code == 200, resp.text
                return resp.json()["predictions"][0]

            return await asyncio.gather(*(one(i) for i in range(len(df))))

    def batched() -> float:
        text = httpx.get(server.url + "/metrics", headers=AUTH).text
        return _metric(text, "mlfolio_batch_requests_count") - _metric(
            text, "mlfolio_batch_requests_bucket", le="1.0"
        )

    before = batched()
    for _ in range(5):  # batching needs requests to overlap; a loaded machine may serialise
        got = asyncio.run(burst())
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-12)
        if batched() > before:
            break
    assert batched() > before, "no batch held more than one request"


# -- the compiled path and the batcher, in process ------------------------------------
def test_compiled_scorer_equals_the_pipeline_on_every_row(registered):
    served = serve.load(f"models:/{MODEL}@champion", registered.tracking_uri)
    assert isinstance(served.scorer, serve.CompiledScorer)
    X = registered.X
    batch = serve.Batch.of(served.columns, {c.name: X[c.name].tolist() for c in served.columns})
    reference = serve.PipelineScorer(registered.model, served.columns)
    features_ = registered.model[:-1].transform(X)
    assert np.array_equal(served.scorer.transform(batch), features_)
    assert np.array_equal(served.scorer.predict_proba(batch), registered.model.predict_proba(X))
    assert np.array_equal(reference.predict_proba(batch), registered.model.predict_proba(X))
    pipeline_only = serve.load(f"models:/{MODEL}/1", registered.tracking_uri, "pipeline")
    assert isinstance(pipeline_only.scorer, serve.PipelineScorer)


def test_text_numbers_parse_like_pandas():
    rng = random.Random(0)
    values = [" ", "", " 12.5 ", "-0", "+3", ".5", "7.", "1e3", "nan", "0x1", "1_000", None]
    for _ in range(20000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 17)))
        point = rng.randint(0, len(digits))
        values.append(("-" if rng.random() < 0.2 else "") + digits[:point] + "." + digits[point:])
    ours = serve._text_to_float(values)
    text = pd.Series(values, dtype=object).astype("string").str.strip()
    theirs = pd.to_numeric(text, errors="coerce").astype("float64").to_numpy()
    assert np.array_equal(ours, theirs, equal_nan=True)


def test_other_pipelines_are_not_compiled(registered):
    plain = Pipeline([("m", LogisticRegression())]).fit(np.eye(2), [0, 1])
    with pytest.raises(serve.NotCompilable):
        serve.CompiledScorer(plain, [serve.Column("a", "double")])


def test_a_failing_request_fails_alone_in_its_batch():
    class Scorer:
        name = "fake"

        def predict_proba(self, batch):
            if -1 in batch.columns["x"].tolist():
                raise ValueError("x must not be negative")
            p = np.asarray(batch.columns["x"], dtype=float) / 10
            return np.column_stack([1 - p, p])

    column = serve.Column("x", "long")
    model = serve.ServedModel(
        name="m",
        version="1",
        alias=None,
        uri="models:/m/1",
        requested_uri="models:/m/1",
        run_id=None,
        tags={},
        threshold=0.5,
        columns=[column],
        scorer=Scorer(),
        tracking_uri="",
    )

    async def main():
        batcher = serve.MicroBatcher(model, None)
        await batcher.start()
        try:
            blocks = [serve.Batch.of([column], {"x": [v]}) for v in (1, -1, 3, 5)]
            return await asyncio.gather(*(batcher.score(b) for b in blocks), return_exceptions=True)
        finally:
            await batcher.stop()

    good1, bad, good3, good5 = asyncio.run(main())
    assert isinstance(bad, serve.RequestError) and bad.status == 400
    assert "negative" in str(bad)
    assert [r.proba[0, 1] for r in (good1, good3, good5)] == [0.1, 0.3, 0.5]
    assert [r.labels[0] for r in (good1, good3, good5)] == [0, 0, 1]  # threshold 0.5


def _fake_model(scorer) -> serve.ServedModel:
    return serve.ServedModel(
        name="m",
        version="1",
        alias=None,
        uri="models:/m/1",
        requested_uri="models:/m/1",
        run_id=None,
        tags={},
        threshold=0.5,
        columns=[serve.Column("x", "long")],
        scorer=scorer,
        tracking_uri="",
    )


class _ThreadRecordingScorer:
    """Scores x / 10, refuses negative x, and records which thread scored each batch."""

    name = "fake"
    inline_rows = 4

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def predict_proba(self, batch):
        self.calls.append((threading.current_thread().name, batch.n))
        if any(v < 0 for v in batch.columns["x"]):
            raise ValueError("x must not be negative")
        p = np.asarray(batch.columns["x"], dtype=float) / 10
        return np.column_stack([1 - p, p])


def test_small_batches_are_scored_on_the_event_loop_big_ones_on_the_scoring_thread():
    scorer = _ThreadRecordingScorer()

    async def main():
        batcher = serve.MicroBatcher(_fake_model(scorer), None)
        assert batcher.inline_rows == 4  # the scorer's own setting
        await batcher.start()
        try:
            x = [serve.Column("x", "long")]
            together = [serve.Batch.of(x, {"x": [v]}) for v in (1, 2, 3)]  # one turn: one batch
            small = await asyncio.gather(*(batcher.score(b) for b in together))
            big = await batcher.score(serve.Batch.of(x, {"x": [1, 2, 3, 4, 5]}))
            mixed = [serve.Batch.of(x, {"x": [v]}) for v in (1, -1, 3)]
            errors = await asyncio.gather(
                *(batcher.score(b) for b in mixed), return_exceptions=True
            )
            return small, big, errors
        finally:
            await batcher.stop()

    loop_thread = threading.current_thread().name
    small, big, errors = asyncio.run(main())
    assert [r.proba[0, 1] for r in small] == [0.1, 0.2, 0.3]
    assert big.proba[:, 1].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert scorer.calls[0] == (loop_thread, 3)  # three requests, one call, no hand-off
    assert scorer.calls[1] == ("mlfolio-score", 5)  # past inline_rows: the scoring thread
    # inline too, a batch that raises is re-scored request by request: the bad one fails alone
    assert [t for t, _ in scorer.calls[2:]] == [loop_thread] * 4
    assert isinstance(errors[1], serve.RequestError) and "negative" in str(errors[1])
    assert errors[0].proba[0, 1] == 0.1 and errors[2].proba[0, 1] == 0.3


def test_the_compiled_scorer_scores_small_batches_inline_the_pipeline_never(registered):
    compiled = serve.load(f"models:/{MODEL}@champion", registered.tracking_uri)
    pipeline = serve.load(f"models:/{MODEL}/1", registered.tracking_uri, "pipeline")
    assert serve.MicroBatcher(compiled, None).inline_rows > 0
    assert serve.MicroBatcher(pipeline, None).inline_rows == 0  # ~9 ms a call: off the loop


def test_the_score_histogram_bins_few_and_many_scores_alike():
    from mlfolio.serve.metrics import SCORE_BUCKETS, _ScoreHistogram

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random(500), SCORE_BUCKETS, [np.nan, 0.0, 1.0, 0.05]])
    edges = np.asarray(SCORE_BUCKETS)
    want = np.bincount(np.searchsorted(edges, scores, side="left"), minlength=len(edges) + 1)
    few, many = (_ScoreHistogram("s", "d", {}, SCORE_BUCKETS) for _ in range(2))
    for i in range(0, len(scores), 7):  # batches of 7: the bisect path
        few.observe_many(scores[i : i + 7])
    many.observe_many(scores)  # one batch of 504: the NumPy path
    assert few.counts == many.counts == want.tolist()
    finite = scores[~np.isnan(scores)]
    assert np.isnan(few.total) and np.isnan(many.total)
    once = _ScoreHistogram("s", "d", {}, SCORE_BUCKETS)
    once.observe_many(finite[:10])
    assert once.total == pytest.approx(float(np.sum(finite[:10])))


def test_server_log_has_no_tracebacks(server):
    text = "".join(server.log)
    assert "Traceback" not in text, text


# -- rows as a client holds them --------------------------------------------------------
def client_rows(n: int = 12) -> pd.DataFrame:
    """Rows of data/telco_churn.csv as a client holds them: pandas.read_csv, the id column
    included, the label dropped, totalcharges a number, seniorcitizen an int."""
    raw = pd.read_csv(CHURN_CSV).drop(columns=["churn"])
    df = raw[raw["totalcharges"].str.strip() != ""].head(n).copy()
    df["totalcharges"] = df["totalcharges"].astype(float)
    assert df["seniorcitizen"].dtype == np.int64
    return df.reset_index(drop=True)


def v2_inputs(df: pd.DataFrame) -> list[dict[str, Any]]:
    kinds = {"int64": "INT64", "float64": "FP64"}
    return [
        {
            "name": c,
            "shape": [len(df)],
            "datatype": kinds.get(str(df[c].dtype), "BYTES"),
            "data": df[c].tolist(),
        }
        for c in df.columns
    ]


def post_client_rows(client: httpx.Client, protocol: str, df: pd.DataFrame) -> httpx.Response:
    """``df`` sent as it is, in one of the server's input protocols."""
    if protocol == "csv":
        return client.post(
            "/invocations", content=df.to_csv(index=False), headers={"Content-Type": "text/csv"}
        )
    if protocol == "v2":
        return client.post(f"/v2/models/{MODEL}/infer", json={"inputs": v2_inputs(df)})
    split = df.to_dict(orient="split")
    payload = {
        "dataframe_split": {"columns": split["columns"], "data": split["data"]},
        "dataframe_records": records(df),
        "instances": records(df),
        "inputs": {c: df[c].tolist() for c in df.columns},
    }[protocol]
    return client.post("/invocations", json={protocol: payload})


def scores(protocol: str, resp: httpx.Response) -> np.ndarray:
    doc = resp.json()
    if protocol == "v2":
        return np.asarray(next(o["data"] for o in doc["outputs"] if o["name"] == "probability"))
    return np.asarray(doc["predictions"])[:, 1]


PROTOCOLS = ["dataframe_records", "dataframe_split", "instances", "inputs", "csv", "v2"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rows_as_a_client_holds_them_are_scored(client, registered, protocol):
    df = client_rows()
    resp = post_client_rows(client, protocol, df)
    assert resp.status_code == 200, resp.text
    want = registered.model.predict_proba(df.drop(columns=["customerid"]))[:, 1]
    np.testing.assert_allclose(scores(protocol, resp), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("protocol", ["dataframe_records", "dataframe_split", "inputs", "csv"])
def test_a_blank_number_is_a_missing_value(client, registered, protocol):
    df = client_rows(3).astype({"totalcharges": object})
    df.loc[1, "totalcharges"] = " "
    resp = post_client_rows(client, protocol, df)
    assert resp.status_code == 200, resp.text
    missing = df.drop(columns=["customerid"]).astype({"totalcharges": float}, errors="ignore")
    missing.loc[1, "totalcharges"] = np.nan
    want = registered.model.predict_proba(missing)[:, 1]
    np.testing.assert_allclose(scores(protocol, resp), want, rtol=0, atol=1e-12)
    # as the pipeline reads the raw text, in training and in serving alike
    np.testing.assert_allclose(
        want, registered.model.predict_proba(df.drop(columns=["customerid"]))[:, 1], rtol=0, atol=0
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unknown_column_is_still_refused_by_name(client, protocol):
    resp = post_client_rows(client, protocol, client_rows(2).assign(foo=1))
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    message = doc["error"] if protocol == "v2" else doc["message"]
    assert "'foo'" in message and "optionally the entity id 'customerid'" in message


def test_the_id_column_comes_from_the_models_schema(client):
    health = client.get("/health").json()
    assert health["routing"]["entity_column"] == "customerid"
    assert "customerid" not in health["columns"]
    assert health["columns"]["totalcharges"] == "double"
    assert health["columns"]["seniorcitizen"] == "string"


def test_numbers_as_numbers_without_the_id_column(client, registered):
    df = client_rows(4).drop(columns=["customerid"])
    resp = client.post("/invocations", json={"dataframe_records": records(df)})
    assert resp.status_code == 200, resp.text
    np.testing.assert_allclose(
        np.asarray(resp.json()["predictions"]),
        registered.model.predict_proba(df),
        rtol=0,
        atol=1e-12,
    )


def test_values_are_read_as_the_pipelines_coercer_reads_them():
    flag = serve.Column("seniorcitizen", "string")
    assert serve.check_values(flag, [0, 1.0, True, "1", None, float("nan"), 2.5]) == [
        "0",
        "1",
        "True",
        "1",
        None,
        None,
        "2.5",
    ]
    with pytest.raises(serve.RequestError, match="'seniorcitizen'.*number inf"):
        serve.check_values(flag, [float("inf")])
    number = serve.Column("totalcharges", "double")
    assert serve.check_values(number, [3320.75, 12, " 7.25 ", " ", "\t", "", None]) == [
        3320.75,
        12,
        7.25,
        None,
        None,
        None,
        None,
    ]
    with pytest.raises(serve.RequestError, match="'totalcharges'.*'N/A' in row 1"):
        serve.check_values(number, [1.0, "N/A"])


def test_versions_logged_with_an_inferred_signature_take_numbers_too(registered):
    """Models logged before the signature followed the schema have totalcharges as a string
    column read as a number: a client's number is taken as its text."""
    from mlflow.models import infer_signature

    columns = serve.columns_from_signature(
        infer_signature(registered.X.head(5)), ["tenure", "monthlycharges", "totalcharges"]
    )
    col = next(c for c in columns if c.name == "totalcharges")
    assert col.kind == "string" and col.numeric_text
    assert serve.check_values(col, [3320.75, 12, " ", None]) == ["3320.75", "12", " ", None]
    with pytest.raises(serve.RequestError, match="'totalcharges'.*boolean true"):
        serve.check_values(col, [True])


def test_any_typed_columns_take_the_coercers_declared_types():
    """Signatures since MLflow's own clients take raw rows name the columns with type Any:
    the served contract types them as the pipeline's coercer declares them."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    signature = ModelSignature(Schema([ColSpec(AnyType(), c) for c in ("tenure", "gender")]))
    columns = serve.columns_from_signature(signature, ["tenure"], ["gender"])
    assert [(c.name, c.kind, c.numeric_text) for c in columns] == [
        ("tenure", "double", False),
        ("gender", "string", False),
    ]
    with pytest.raises(serve.ServeError, match="'gender'.*neither numeric nor categorical"):
        serve.columns_from_signature(signature, ["tenure"], [])


@pytest.mark.parametrize(
    "module", ["mlfolio.serve.contract", "mlfolio.lambda_handler", "mlfolio.deploy.kubernetes"]
)
def test_the_contract_imports_without_pandas_numpy_or_fastapi(module):
    """The deploy targets and the Lambda handler import the serving contract, not the server:
    in a fresh interpreter, importing them loads none of the server's heavy libraries."""
    code = (
        f"import sys, {module}; print(sorted(m for m in ('pandas', 'numpy', 'fastapi', "
        "'starlette', 'sklearn', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


def test_serve_options_refuse_bad_ab_flags_before_anything_is_loaded():
    """One place checks the A/B flags: ServeOptions, named after the flag at fault."""
    assert serve.ServeOptions("models:/m@champion").mode is None
    assert (
        serve.ServeOptions(
            "models:/m@champion", challenger="models:/m@challenger", challenger_weight=0.2
        ).mode
        == "ab"
    )
    assert (
        serve.ServeOptions(
            "models:/m@champion", challenger="models:/m@challenger", shadow=True
        ).mode
        == "shadow"
    )
    with pytest.raises(serve.ServeError, match="--challenger-weight needs --challenger"):
        serve.ServeOptions("models:/m@champion", challenger_weight=0.2)
    with pytest.raises(serve.ServeError, match="--challenger-weight 1.5: expected a share"):
        serve.ServeOptions("models:/m@champion", challenger="models:/m@c", challenger_weight=1.5)


# -- the batch type ------------------------------------------------------------------------
_BATCH_COLUMNS = [
    serve.Column("tenure", "long"),
    serve.Column("monthlycharges", "double"),
    serve.Column("gender", "string"),
    serve.Column("paperless", "boolean"),
    serve.Column("customerid", "entity", optional=True),
]


def test_column_kinds_are_an_enum_and_a_wrong_one_is_refused_naming_the_column():
    col = serve.Column("tenure", "long")
    assert col.kind is serve.ColumnKind.LONG and col.kind == "long"  # its text still reads
    assert json.dumps({col.name: col.kind}) == '{"tenure": "long"}'  # /health's columns
    with pytest.raises(serve.ServeError, match=r"column 'x': kind 'int' is not one of"):
        serve.Column("x", "int")


def test_a_parsed_request_is_a_batch_with_the_entity_split_off():
    body = {
        "dataframe_split": {
            "columns": ["customerid", "tenure", "monthlycharges", "gender", "paperless"],
            "data": [["c1", 3, "29.5", "Male", True], [7, None, 10, 1, None]],
        }
    }
    batch = serve.parse_mlflow_json(json.dumps(body).encode(), _BATCH_COLUMNS)
    assert batch.n == 2
    assert set(batch.columns) == {"tenure", "monthlycharges", "gender", "paperless"}
    assert batch.entity == ("c1", 7)  # never among the scored columns
    assert batch.values["monthlycharges"] == (29.5, 10)  # checked values, as sent
    cols = batch.columns  # the same as arrays, built on first use
    assert cols["monthlycharges"].dtype == np.float64  # numeric text read, 10 a float
    assert cols["monthlycharges"].tolist() == [29.5, 10.0]
    assert cols["tenure"].dtype == object and cols["tenure"].tolist() == [3, None]
    assert cols["gender"].tolist() == ["Male", "1"]  # a 0/1 flag as its text
    assert cols["paperless"].tolist() == [True, None]
    # without the entity column, no entity; the same from the other protocols
    del body["dataframe_split"]["data"][0][0], body["dataframe_split"]["data"][1][0]
    body["dataframe_split"]["columns"].pop(0)
    assert serve.parse_mlflow_json(json.dumps(body).encode(), _BATCH_COLUMNS).entity is None
    csv = b"tenure,monthlycharges,gender,paperless,customerid\n3,29.5,Male,true,c1\n"
    assert serve.parse_csv(csv, _BATCH_COLUMNS).entity == ("c1",)


def test_a_number_too_large_for_a_double_is_refused_when_the_request_is_parsed():
    # it would overflow only when scored, failing the micro-batch it joined
    names = ["tenure", "monthlycharges", "gender", "paperless"]
    body = {"dataframe_split": {"columns": names, "data": [[1, 10**400, "Male", True]]}}
    with pytest.raises(serve.RequestError, match=r"column 'monthlycharges': a number too large"):
        serve.parse_mlflow_json(json.dumps(body).encode(), _BATCH_COLUMNS)
    body["dataframe_split"]["data"] = [[1, 2**1023 + 1, "Male", True]]  # still a double
    batch = serve.parse_mlflow_json(json.dumps(body).encode(), _BATCH_COLUMNS)
    assert batch.columns["monthlycharges"][0] == float(2**1023)


def test_a_batch_is_immutable():
    batch = serve.Batch.of(_BATCH_COLUMNS, {"tenure": [1, 2], "monthlycharges": [1.5, None]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.n = 3
    with pytest.raises(TypeError):
        batch.columns["tenure"] = np.array([9, 9])  # a read-only mapping
    with pytest.raises(TypeError):
        batch.values["tenure"] = (9, 9)
    assert all(type(v) is tuple for v in batch.values.values())  # immutable values
    for values in batch.columns.values():
        with pytest.raises(ValueError, match="read-only"):
            values[0] = 0
    part = batch.take(np.array([1]))
    assert part.n == 1 and np.isnan(part.columns["monthlycharges"][0])  # None: NaN
    with pytest.raises(ValueError, match="read-only"):
        part.columns["tenure"][0] = 0
    assert batch.columns["tenure"].tolist() == [1, 2]  # the part is a copy


def test_batches_concatenate_and_split_in_row_order():
    a = serve.Batch.of(
        _BATCH_COLUMNS, {"tenure": [1], "gender": ["F"], "customerid": ["a"]}, checked=False
    )
    b = serve.Batch.of(
        _BATCH_COLUMNS, {"tenure": [2, 3], "gender": [None, "M"], "customerid": [4, 5]}
    )
    both = serve.Batch.concat([a, b], ["tenure", "gender"])
    assert both.n == 3 and both.columns["gender"].tolist() == ["F", None, "M"]
    assert both.entity == ("a", 4, 5)
    back = both.take(np.array([2, 0]))
    assert back.columns["tenure"].tolist() == [3, 1] and back.entity == (5, "a")
    assert serve.Batch.concat([a], ["tenure"]) is a
    with pytest.raises(serve.RequestError, match=r"column 'monthlycharges': a number too large"):
        serve.Batch.of(_BATCH_COLUMNS, {"monthlycharges": [10**400]})


class _XScorer:
    """Scores x / 10; x = 13 raises an unexpected error (a scorer bug), x = -1 a bad value."""

    name = "fake"
    inline_rows = 4

    def predict_proba(self, batch):
        x = np.asarray(batch.columns["x"], dtype=float)
        if 13 in x:
            raise RuntimeError("a scorer bug")
        if (x < 0).any():
            raise ValueError("x must not be negative")
        return np.column_stack([1 - x / 10, x / 10])


def _invocations_cases() -> list[tuple[str, str, dict[str, str], Any]]:
    """(method, path, headers, body) of /invocations requests, good and bad, as sent."""
    ok = {"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "req-1"}
    js = {**ok, "Content-Type": "application/json"}

    def split(*xs: Any) -> bytes:
        return json.dumps(
            {"dataframe_split": {"columns": ["x"], "data": [[x] for x in xs]}}
        ).encode()

    def chunks():
        for _ in range(40):
            yield b" " * 1024

    return [
        ("POST", "/invocations", js, split(1, 2)),
        ("POST", "/invocations", {**js, "Accept": "text/csv"}, split(3)),
        ("POST", "/invocations", {**ok, "Content-Type": "text/csv"}, b"x\n4\n5\n"),
        ("POST", "/invocations", {k: v for k, v in js.items() if k != "X-Request-ID"}, split(1)),
        ("POST", "/invocations", {**js, "Content-Type": "text/plain"}, split(1)),
        (
            "POST",
            "/invocations",
            {**js, "Content-Type": "application/json; charset=latin-1"},
            b"{}",
        ),
        ("POST", "/invocations", js, b'{"dataframe_split": '),
        ("POST", "/invocations", js, json.dumps({"dataframe_records": [{"y": 1}]}).encode()),
        ("POST", "/invocations", js, split(-1)),
        ("POST", "/invocations", js, split(13)),
        ("POST", "/invocations", {**js, "X-Request-ID": "x" * 200}, split(1)),
        ("POST", "/invocations", {**js, "Authorization": "Bearer wrong"}, split(1)),
        ("POST", "/invocations", {"Content-Type": "application/json"}, split(1)),
        ("POST", "/invocations", {**js, "Content-Length": "nine"}, split(1)),
        ("POST", "/invocations", js, b"[" + b"1," * 20_000 + b"1]"),  # over the 32 KiB limit
        ("POST", "/invocations", js, chunks()),  # no Content-Length, over the limit as it comes
        ("GET", "/invocations", ok, None),
        ("PUT", "/invocations", js, split(1)),
    ]


def test_invocations_skip_the_framework_layers_and_answer_as_through_them():
    """POST /invocations is taken from the server to the gate and the handler directly
    (ServingApp): every answer — status, body, headers — and every count on /metrics is
    the one the same app gives through FastAPI's stack."""
    from starlette.testclient import TestClient

    options = serve.ServeOptions(model="models:/m/1", token=TOKEN, max_body_bytes=32 * 1024)

    def answers(direct: bool) -> tuple[list[tuple[int, bytes, dict[str, str]]], str, int]:
        app = serve.create_app(_fake_model(_XScorer()), options)
        if not direct:
            app.invocations = None  # every request through FastAPI's middleware and router
        out = []
        with TestClient(app, raise_server_exceptions=False) as client:
            stack, through_stack = app.middleware_stack, []

            async def counting(scope, receive, send):
                through_stack.append(scope["path"])
                await stack(scope, receive, send)

            app.middleware_stack = counting
            for method, path, headers, body in _invocations_cases():
                resp = client.request(method, path, headers=headers, content=body)
                got = dict(resp.headers)
                if "x-request-id" in got and "X-Request-ID" not in headers:
                    assert re.fullmatch(r"[0-9a-f]{32}", got.pop("x-request-id"))
                    body_doc = resp.json()
                    body_doc.pop("request_id", None)
                    content = json.dumps(body_doc).encode()
                else:
                    content = resp.content
                out.append((resp.status_code, content, got))
            metrics = client.get("/metrics", headers=AUTH).text
        counted = ("mlfolio_requests_total", "mlfolio_request_duration_seconds_count")
        requests = "\n".join(line for line in metrics.splitlines() if line.startswith(counted))
        return out, requests, len([p for p in through_stack if p == "/invocations"])

    direct, direct_counts, direct_stacked = answers(direct=True)
    stacked, stacked_counts, all_stacked = answers(direct=False)
    for case, a, b in zip(_invocations_cases(), direct, stacked, strict=True):
        assert a == b, (case[:2], case[2], a, b)
    assert direct_counts == stacked_counts and 'status="413"' in direct_counts
    statuses = [status for status, _, _ in direct]
    assert statuses == [
        200,
        200,
        200,
        200,
        415,
        415,
        400,
        400,
        400,
        500,
        400,
        401,
        401,
        400,
        413,
        413,
        405,
        405,
    ]
    assert all_stacked == len(statuses)  # the slow app: every request through the stack
    assert direct_stacked == 2  # the fast app: only GET and PUT
