"""mlfolio serve with a challenger: A/B routing by entity hash, shadow scoring, the entity
column, request ids, per-variant metrics and drift gauges. Real servers on 127.0.0.1
(through the CLI) serving two versions registered in a temporary SQLite store."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from mlfolio import cli, predlog, serve

from .conftest import CHURN_CSV
from .servers import (
    MODEL,
    THRESHOLDS,
    Registered,
    Server,
    register_models,
    split_body,
    start_server,
    stop_server,
    wait_for_rows,
)

WEIGHT = 0.3


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    return register_models(tmp_path_factory.mktemp("ab"))


@pytest.fixture(scope="module")
def ab_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ab-log")


@pytest.fixture(scope="module")
def ab_server(registered, ab_log) -> Iterator[Server]:
    server = start_server(
        registered,
        "--challenger",
        f"models:/{MODEL}@challenger",
        "--challenger-weight",
        str(WEIGHT),
        "--entity-column",
        "customerid",
        "--prediction-log",
        str(ab_log),
    )
    try:
        yield server
    finally:
        stop_server(server.proc)


@pytest.fixture
def client(ab_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ab_server.url, timeout=30) as c:
        yield c


def expected_variant(entity: str) -> str:
    return "challenger" if serve.route_share(MODEL, entity) < WEIGHT else "champion"


def assert_rows_scored_by_their_variant(
    registered: Registered, df: pd.DataFrame, answer: dict[str, Any]
) -> None:
    got = np.asarray(answer["predictions"])
    for variant, model in registered.models.items():
        mask = np.asarray(answer["variants"]) == variant
        if mask.any():
            want = model.predict_proba(df[mask.tolist()])
            np.testing.assert_allclose(got[mask], want, rtol=0, atol=1e-12)
            labels = np.asarray(answer["labels"])[mask]
            assert labels.tolist() == (want[:, 1] >= THRESHOLDS[variant]).astype(int).tolist()


# -- A/B routing --------------------------------------------------------------------------
def test_ab_share_is_within_binomial_tolerance_and_sticky(client, registered):
    n = 2400
    X = registered.X
    df = X.iloc[np.arange(n) % len(X)].reset_index(drop=True)
    entities = [f"cust-{i:05d}" for i in range(n)]
    variants: list[str] = []
    for start in range(0, n, 600):
        resp = client.post(
            "/invocations",
            json=split_body(df.iloc[start : start + 600], entities[start : start + 600]),
        )
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert len(answer["variants"]) == 600
        assert resp.headers["x-mlfolio-variant"] == "mixed"
        assert_rows_scored_by_their_variant(registered, df.iloc[start : start + 600], answer)
        variants += answer["variants"]
    share = variants.count("challenger") / n
    sd = (WEIGHT * (1 - WEIGHT) / n) ** 0.5
    assert abs(share - WEIGHT) < 4 * sd, share
    assert variants == [expected_variant(e) for e in entities]

    # The same entities, other batch sizes and orders, other rows: the same variants.
    rng = np.random.default_rng(7)
    picks = rng.choice(n, 120, replace=False)
    for size in (1, 7, 40):
        for start in range(0, len(picks) if size > 1 else 20, size):
            idx = picks[start : start + size]
            rows = X.iloc[(idx * 13 + size) % len(X)].reset_index(drop=True)
            resp = client.post("/invocations", json=split_body(rows, [entities[i] for i in idx]))
            answer = resp.json()
            assert answer["variants"] == [variants[i] for i in idx]
            assert_rows_scored_by_their_variant(registered, rows, answer)


def test_a_mixed_request_is_reassembled_in_row_order(client, registered):
    df = registered.X.head(40)
    entities = registered.ids.head(40).tolist()
    want = [expected_variant(e) for e in entities]
    assert 0 < want.count("challenger") < 40
    resp = client.post("/invocations", json=split_body(df, entities))
    answer = resp.json()
    assert answer["variants"] == want
    assert resp.headers["x-mlfolio-variant"] == "mixed"
    assert_rows_scored_by_their_variant(registered, df, answer)
    # records with the entity id in each record, and CSV, route the same way
    records = df.assign(customerid=entities).astype(object).to_dict(orient="records")
    assert (
        client.post("/invocations", json={"dataframe_records": records}).json()["variants"] == want
    )
    csv = df.assign(customerid=entities).to_csv(index=False)
    csv_answer = client.post(
        "/invocations", content=csv, headers={"Content-Type": "text/csv"}
    ).json()
    assert csv_answer["variants"] == want
    np.testing.assert_allclose(csv_answer["predictions"], answer["predictions"], atol=1e-12)


def test_v2_infer_routes_like_invocations(client, registered):
    df = registered.X.head(12)
    entities = registered.ids.head(12).tolist()
    kinds = {"int64": "INT64", "float64": "FP64"}
    inputs = [
        {
            "name": c,
            "shape": [len(df)],
            "datatype": kinds.get(str(df[c].dtype), "BYTES"),
            "data": df[c].astype(object).tolist(),
        }
        for c in df.columns
    ]
    inputs.append({"name": "customerid", "shape": [12], "datatype": "BYTES", "data": entities})
    resp = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": inputs})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["parameters"]["variants"] == [expected_variant(e) for e in entities]
    probability = next(o for o in doc["outputs"] if o["name"] == "probability")["data"]
    ref = client.post("/invocations", json=split_body(df, entities)).json()
    np.testing.assert_allclose(probability, np.asarray(ref["predictions"])[:, 1], atol=1e-12)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])


def test_header_entity_routes_the_whole_request_and_request_ids_come_back(client, registered):
    df = registered.X.head(5)
    for entity in ("alpha", "beta", "gamma", "delta"):
        resp = client.post(
            "/invocations",
            json=split_body(df),
            headers={"X-Entity-ID": entity, "X-Request-ID": f"req-{entity}"},
        )
        answer = resp.json()
        assert answer["variants"] == [expected_variant(entity)] * 5
        assert resp.headers["x-mlfolio-variant"] == expected_variant(entity)
        assert answer["request_id"] == resp.headers["x-request-id"] == f"req-{entity}"
    bad = client.post("/invocations", json=split_body(df), headers={"X-Request-ID": "x" * 129})
    assert bad.status_code == 400 and "X-Request-ID" in bad.json()["message"]


def test_entity_column_is_logged_not_scored(client, registered, ab_log):
    df = registered.X.head(3)
    resp = client.post(
        "/invocations",
        json=split_body(df, ["e-1", "e-2", "e-3"]),
        headers={"X-Request-ID": "entity-check"},
    )
    assert resp.status_code == 200
    health = client.get("/health").json()
    assert "customerid" not in health["columns"]
    assert health["routing"] == {
        "mode": "ab",
        "weight": WEIGHT,
        "salt": MODEL,
        "entity_column": "customerid",
    }
    assert health["challenger"]["version"] == "2" and health["version"] == "1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = predlog.read(ab_log)
        logged = logged[logged["request_id"] == "entity-check"]
        if len(logged) == 3:
            break
        time.sleep(0.1)
    assert sorted(logged["entity_id"]) == ["e-1", "e-2", "e-3"]
    assert "customerid" not in logged.columns and "tenure" in logged.columns
    answer = resp.json()
    by_row = logged.set_index("row").sort_index()
    np.testing.assert_allclose(by_row["score"], np.asarray(answer["predictions"])[:, 1])
    assert by_row["variant"].tolist() == answer["variants"]
    # unknown columns are still refused, naming them
    bad = client.post(
        "/invocations", json=split_body(df.assign(nope=1)), headers={"X-Request-ID": "bad-one"}
    )
    assert bad.status_code == 400 and "nope" in bad.json()["message"]
    assert bad.headers["x-request-id"] == "bad-one"


def test_metrics_count_rows_per_variant_and_show_drift_gauges(client, registered, ab_log):
    client.post(
        "/invocations", json=split_body(registered.X.head(20), registered.ids.head(20).tolist())
    )
    text = client.get("/metrics").text
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'mlfolio_variant_rows_total\{[^}]*variant="(\w+)"[^}]*\} (\S+)', text)
    }
    assert counts["champion"] > 0 and counts["challenger"] > 0
    assert "mlfolio_prediction_log_rows_written_total" in text
    assert "mlfolio_drift_share" not in text
    doc = {
        "share_drifted": 0.25,
        "n_drifted": 5,
        "dataset_drift": False,
        "created_at": "2026-11-27T12:00:00+00:00",
        "model": {"name": MODEL, "version": "1"},
        "quality": {"current": {"roc_auc": 0.81}, "delta": {"roc_auc": -0.04}},
    }
    (ab_log / "drift.json").write_text(json.dumps(doc))
    text = client.get("/metrics").text
    assert re.search(r"mlfolio_drift_share\{[^}]*\} 0\.25", text), text[-2000:]
    assert re.search(r"mlfolio_quality_roc_auc_delta\{[^}]*\} -0\.04", text)
    time.sleep(0.01)  # a new mtime
    (ab_log / "drift.json").write_text(json.dumps({**doc, "share_drifted": 0.5}))
    assert re.search(r"mlfolio_drift_share\{[^}]*\} 0\.5", client.get("/metrics").text)
    (ab_log / "drift.json").write_text("{not json")
    assert "mlfolio_drift_share" not in client.get("/metrics").text
    (ab_log / "drift.json").unlink()


# -- shadow -------------------------------------------------------------------------------
def test_shadow_answers_with_the_champion_and_logs_the_challenger(registered, tmp_path):
    folder = tmp_path / "shadow-log"
    server = start_server(
        registered,
        "--challenger",
        f"models:/{MODEL}@challenger",
        "--shadow",
        "--prediction-log",
        str(folder),
    )
    try:
        df = registered.X.iloc[100:130].reset_index(drop=True)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            ids = []
            for k in range(10):
                part = df.iloc[3 * k : 3 * k + 3]
                resp = c.post("/invocations", json=split_body(part))
                answer = resp.json()
                want = registered.models["champion"].predict_proba(part)
                np.testing.assert_allclose(answer["predictions"], want, rtol=0, atol=1e-12)
                assert "variants" not in answer
                assert resp.headers["x-mlfolio-variant"] == "champion"
                ids.append(answer["request_id"])
            assert c.get("/health").json()["routing"]["mode"] == "shadow"
        logged = wait_for_rows(folder, 60)
        for variant, shadow in (("champion", False), ("challenger", True)):
            rows = logged[logged["variant"] == variant]
            assert set(rows["shadow"]) == {shadow}
            assert sorted(rows["request_id"]) == sorted(i for i in ids for _ in range(3))
            assert (rows["model_version"] == ("2" if shadow else "1")).all()
        shadow_rows = logged[logged["shadow"]].sort_values(["request_id", "row"])
        ordered = pd.concat(
            [
                df.iloc[3 * ids.index(r) + k : 3 * ids.index(r) + k + 1]
                for r, k in zip(shadow_rows["request_id"], shadow_rows["row"], strict=True)
            ]
        )
        np.testing.assert_allclose(
            shadow_rows["score"],
            registered.models["challenger"].predict_proba(ordered)[:, 1],
            rtol=0,
            atol=1e-12,
        )
        assert len(predlog.read(folder)) == 30  # shadow rows only on request
    finally:
        stop_server(server.proc)
    # uvicorn re-raises SIGTERM after its graceful shutdown
    assert server.proc.returncode in (0, -signal.SIGTERM), "".join(server.log)
    assert "Traceback" not in "".join(server.log)


# -- flags --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, flag",
    [
        (["--challenger", "models:/m@challenger"], "--challenger-weight"),
        (
            ["--challenger", "models:/m@challenger", "--challenger-weight", "1.5"],
            "--challenger-weight 1.5",
        ),
        (
            ["--challenger", "models:/m@challenger", "--challenger-weight", "0"],
            "--challenger-weight 0",
        ),
        (
            ["--challenger", "models:/m@challenger", "--challenger-weight", "0.2", "--shadow"],
            "--shadow",
        ),
        (["--shadow"], "--shadow needs --challenger"),
        (["--challenger-weight", "0.5"], "--challenger-weight needs --challenger"),
    ],
)
def test_bad_routing_flags_fail_naming_the_flag(args, flag, capsys):
    assert cli.main(["serve", "--model", "models:/m@champion", "--port", "0", *args]) == 1
    assert flag in capsys.readouterr().err


def test_entity_column_that_the_model_reads_is_refused(registered, capsys):
    code = cli.main(
        [
            "serve",
            "--model",
            f"models:/{MODEL}@champion",
            "--tracking-uri",
            registered.tracking_uri,
            "--port",
            "0",
            "--entity-column",
            "tenure",
        ]
    )
    assert code == 1
    assert "--entity-column 'tenure'" in capsys.readouterr().err


def test_ab_server_log_has_no_tracebacks(ab_server):
    assert "Traceback" not in "".join(ab_server.log)


# -- the schema's id column ---------------------------------------------------------------
def test_the_schemas_id_column_routes_and_is_logged_without_a_flag(registered, tmp_path):
    """No --entity-column: the id column recorded with the model is the entity key."""
    folder = tmp_path / "id-log"
    server = start_server(
        registered,
        "--challenger",
        f"models:/{MODEL}@challenger",
        "--challenger-weight",
        str(WEIGHT),
        "--prediction-log",
        str(folder),
    )
    try:
        raw = pd.read_csv(CHURN_CSV).drop(columns=["churn"]).head(40)
        raw = raw[raw["totalcharges"].str.strip() != ""].reset_index(drop=True)
        raw["totalcharges"] = raw["totalcharges"].astype(float)  # as a client holds them
        entities = raw["customerid"].tolist()
        want = [expected_variant(e) for e in entities]
        assert 0 < want.count("challenger") < len(want)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            resp = c.post(
                "/invocations",
                headers={"X-Request-ID": "by-id-column"},
                json={"dataframe_records": raw.to_dict(orient="records")},
            )
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert answer["variants"] == want
            assert_rows_scored_by_their_variant(
                registered, raw.drop(columns=["customerid"]), answer
            )
            assert c.get("/health").json()["routing"]["entity_column"] == "customerid"
        logged = wait_for_rows(folder, len(raw)).set_index("row").sort_index()
        assert logged["entity_id"].tolist() == entities
        assert logged["variant"].tolist() == want
        assert "customerid" not in logged.columns
    finally:
        stop_server(server.proc)
    assert "Traceback" not in "".join(server.log)
