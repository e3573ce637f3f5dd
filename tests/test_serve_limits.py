"""mlfolio serve against hostile requests: bearer scheme spelling, JSON nested without end,
malformed V2 ``parameters``, and many large bodies at once (memory held by the admission
limit). A real server subprocess (``mlfolio serve``) and real HTTP clients."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .servers import MODEL, Registered, register_models, start_server, stop_server, typed_value

TOKEN = "limits-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
MB = 1_000_000


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    return register_models(tmp_path_factory.mktemp("serve-limits"))


@pytest.fixture(scope="module")
def server(registered):
    server = start_server(registered, "--token", TOKEN)
    try:
        yield server
    finally:
        stop_server(server.proc)


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def split_doc(registered: Registered, n: int, url: str) -> dict[str, Any]:
    """``n`` Telco rows (cycled) as a dataframe_split body, typed by the served signature."""
    meta = httpx.get(f"{url.rstrip('/')}/v2/models/{MODEL}", headers=AUTH, timeout=10).json()
    types = {spec["name"]: spec["datatype"] for spec in meta["inputs"]}
    X = registered.X[list(types)]
    rows = [
        [typed_value(v, types[c]) for c, v in zip(X.columns, row, strict=True)]
        for row in X.astype(object).values.tolist()
    ]
    return {
        "dataframe_split": {
            "columns": list(X.columns),
            "data": [rows[i % len(rows)] for i in range(n)],
        }
    }


def expected(registered: Registered, n: int) -> np.ndarray:
    X = registered.X
    return registered.models["champion"].predict_proba(X.iloc[np.arange(n) % len(X)])[:, 1]


def assert_scores(registered: Registered, resp: httpx.Response, n: int) -> None:
    assert resp.status_code == 200, resp.text
    got = np.asarray(resp.json()["predictions"])[:, 1]
    np.testing.assert_allclose(got, expected(registered, n), rtol=0, atol=1e-12)


def v2_doc(client: httpx.Client, registered: Registered, n: int = 2) -> dict[str, Any]:
    """A JSON V2 inference request for ``n`` rows, typed from the server's own metadata."""
    meta = client.get(f"/v2/models/{MODEL}").json()
    X = registered.X.head(n)
    inputs = []
    for spec in meta["inputs"]:
        values = [typed_value(v, spec["datatype"]) for v in X[spec["name"]].tolist()]
        inputs.append(
            {"name": spec["name"], "datatype": spec["datatype"], "shape": [n], "data": values}
        )
    return {"inputs": inputs}


# -- bearer token ------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(server, scheme):
    resp = httpx.get(
        f"{server.url}/health", headers={"Authorization": f"{scheme} {TOKEN}"}, timeout=10
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == MODEL


def test_token_itself_stays_case_sensitive(server):
    for value in (
        f"Bearer {TOKEN.upper()}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer",
        f"Bearer{TOKEN}",
        f"Bearer {TOKEN} x",
    ):
        resp = httpx.get(f"{server.url}/health", headers={"Authorization": value}, timeout=10)
        assert resp.status_code == 401, value
        assert resp.headers["www-authenticate"].startswith("Bearer")


# -- JSON nested without end ----------------------------------------------------------------
def deep(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


@pytest.mark.parametrize("levels", [100_000, 900, 40])
def test_deeply_nested_json_is_400_naming_the_limit(client, registered, levels):
    bodies = {
        "/invocations": b'{"inputs": ' + deep(levels) + b"}",
        f"/v2/models/{MODEL}/infer": json.dumps(v2_doc(client, registered, 1))
        .encode()
        .replace(b'"data": [', b'"data": [' + deep(levels) + b", ", 1),
    }
    for path, body in bodies.items():
        resp = client.post(path, content=body, headers=JSON)
        assert resp.status_code == 400, (path, levels, resp.status_code, resp.text[:300])
        message = resp.json().get("message") or resp.json().get("error")
        assert "nested deeper than 32 levels" in message, (path, message)
    # the server is unharmed
    assert client.get("/ping").status_code == 200
    doc = split_doc(registered, 3, str(client.base_url))
    assert_scores(registered, client.post("/invocations", json=doc), 3)


def test_nesting_depth_ignores_brackets_inside_strings(client, registered):
    """Brackets and escaped quotes inside JSON strings are text, not nesting."""
    doc = split_doc(registered, 2, str(client.base_url))
    key = "[" * 50 + '\\"' + "{" * 50 + "\\\\"
    body = '{"' + key + '": "]]]", ' + json.dumps(doc)[1:]
    assert json.loads(body)[json.loads(f'"{key}"')] == "]]]"
    assert_scores(registered, client.post("/invocations", content=body, headers=JSON), 2)


# -- V2 parameters -----------------------------------------------------------------------------
def _with(doc: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    if where == "request":
        doc["parameters"] = value
    elif where == "input":
        doc["inputs"][0]["parameters"] = value
    else:
        doc["outputs"] = [{"name": "label", "parameters": value}]
    return doc


@pytest.mark.parametrize(
    "where, value, field",
    [
        ("request", [], "parameters"),
        ("request", ["binary_data_output"], "parameters"),
        ("request", "binary_data_output", "parameters"),
        ("request", 7, "parameters"),
        ("request", {"binary_data_output": "yes"}, "parameters.binary_data_output"),
        ("request", {"binary_data_output": 1}, "parameters.binary_data_output"),
        ("request", {"priority": {"nested": 1}}, "parameters.priority"),
        ("request", {"tags": [1, 2]}, "parameters.tags"),
        ("input", "binary", "inputs[0].parameters"),
        ("input", [1], "inputs[0].parameters"),
        ("input", {"binary_data_size": "12"}, "inputs[0].parameters.binary_data_size"),
        ("input", {"binary_data_size": 1.5}, "inputs[0].parameters.binary_data_size"),
        ("input", {"note": None}, "inputs[0].parameters.note"),
        ("output", [1], "outputs[0].parameters"),
        ("output", "binary", "outputs[0].parameters"),
        ("output", {"binary_data": "false"}, "outputs[0].parameters.binary_data"),
    ],
)
def test_malformed_v2_parameters_are_400_naming_the_field(client, registered, where, value, field):
    doc = _with(v2_doc(client, registered), where, value)
    resp = client.post(f"/v2/models/{MODEL}/infer", json=doc)
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
    assert resp.json()["error"].startswith(f"{field}: "), resp.json()["error"]


def test_well_formed_v2_parameters_are_accepted(client, registered):
    doc = v2_doc(client, registered)
    doc["parameters"] = {"binary_data_output": False, "priority": 2, "tag": "x", "f": 0.5}
    doc["inputs"][0]["parameters"] = {"note": "text"}
    doc["outputs"] = [{"name": "probability", "parameters": {"binary_data": False}}]
    resp = client.post(f"/v2/models/{MODEL}/infer", json=doc)
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    np.testing.assert_allclose(out["data"], expected(registered, 2), rtol=0, atol=1e-12)


# -- large bodies --------------------------------------------------------------------------------
def vm_hwm_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.slow
def test_many_large_bodies_at_once_stay_within_memory(registered):
    """16 clients send a 10 MB body each at the same moment (under the 10 MiB per-request
    limit): each gets an answer (scores, or 503 from the admission limit), and the server's
    peak memory grows by less than 250 MB (1.27 GB before the admission limit, 170 MB
    with it)."""
    server = start_server(registered, "--token", TOKEN)
    try:
        per_row = len(json.dumps(split_doc(registered, 4000, server.url))) / 4000
        n = int(9.95 * MB / per_row)
        body = json.dumps(split_doc(registered, n, server.url)).encode()
        assert 9.9 * MB < len(body) <= 10 * MB, len(body)
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            small = split_doc(registered, 5, server.url)
            assert_scores(registered, c.post("/invocations", json=small), 5)
        before = vm_hwm_mb(server.proc.pid)

        results: list[httpx.Response | BaseException] = []
        start = threading.Barrier(16)

        def send() -> None:
            try:
                with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
                    start.wait()
                    results.append(c.post("/invocations", content=body, headers=JSON))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                results.append(exc)

        threads = [threading.Thread(target=send) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        grown = vm_hwm_mb(server.proc.pid) - before

        assert len(results) == 16 and all(isinstance(r, httpx.Response) for r in results), results
        statuses = sorted(r.status_code for r in results)
        assert grown < 250, f"peak RSS grew by {grown:.0f} MB ({statuses})"
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses, statuses
        for r in results:
            if r.status_code == 200:
                assert_scores(registered, r, n)
            else:
                assert "in flight" in r.json()["message"], r.json()
                assert r.headers["retry-after"] == "1"
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            assert_scores(registered, c.post("/invocations", json=small), 5)
    finally:
        stop_server(server.proc)


def test_chunked_body_is_cut_at_the_limit(server, registered):
    """Without a Content-Length the server stops reading at the limit (10 MiB): 413."""
    sent = 0

    def chunks():
        nonlocal sent
        piece = b" " * 65536
        for _ in range(400):  # 26 MB of whitespace, if the server read it all
            sent += len(piece)
            yield piece

    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        resp = c.post("/invocations", content=chunks(), headers=JSON)
        assert resp.status_code == 413, resp.text
        assert "10485760 bytes" in resp.json()["message"]
        doc = split_doc(registered, 2, server.url)
        assert_scores(registered, c.post("/invocations", json=doc), 2)


def test_content_length_over_the_limit_is_refused_unread(server):
    """A declared length over the limit is refused from the headers alone: the client that
    waits for ``100 Continue`` gets the 413 without sending its body."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /invocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
            "\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "100 Continue" not in head
