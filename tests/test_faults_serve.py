"""Issue 21, the server's fault rows: clients that announce a body and never send it (or
send it slowly), and text that cannot be encoded in a request during normal traffic. A
real ``mlfolio serve`` subprocess, raw sockets and real HTTP clients; the prediction log
read back from its SQLite file."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlfolio import predlog
from mlfolio.errors import RequestError, ServeError
from mlfolio.serve import ServeOptions
from mlfolio.serve.columns import Column
from mlfolio.serve.protocols.mlflow import parse_mlflow_json
from mlfolio.serve.protocols.v2 import parse_v2

from .servers import Registered, register_models, split_body, start_server, stop_server

BODY_TIMEOUT = 2.0
JSON = {"Content-Type": "application/json"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    return register_models(tmp_path_factory.mktemp("faults-serve"))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults-serve-log")


@pytest.fixture(scope="module")
def server(registered, log_dir):
    server = start_server(
        registered,
        "--body-timeout",
        f"{BODY_TIMEOUT:g}",
        "--prediction-log",
        str(log_dir),
        "--entity-column",
        "customerid",
    )
    try:
        yield server
    finally:
        stop_server(server.proc)


def _address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _stalled_post(server, source: str, length: int, sent: bytes = b"") -> socket.socket:
    """A POST from ``source`` (a loopback address of its own: another client) announcing
    ``length`` bytes of body, of which only ``sent`` is sent."""
    sock = socket.create_connection(_address(server), timeout=30, source_address=(source, 0))
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
        + sent
    )
    return sock


def _answer(sock: socket.socket, timeout: float) -> tuple[str, bool]:
    """What the server sent within ``timeout`` (status line first; "" for nothing), and
    whether it closed the connection after it."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                return data.decode(errors="replace"), True
            data += piece
    except TimeoutError:
        return data.decode(errors="replace"), False


# -- row 11: bodies announced and never sent ------------------------------------------------
@pytest.mark.slow
def test_stalled_bodies_do_not_lock_out_scoring(server, registered):
    """Two POSTs announcing 8 MiB each (the whole 16 MiB in-flight budget) and a third
    trickling its body: other clients are still scored at once, and the stalled ones get
    408 (connection closed) once nothing came for --body-timeout. Before: every scoring
    request was refused with 503 "bytes of request bodies in flight" for as long as the
    sockets stayed open."""
    doc = split_body(registered.X.head(3))
    with httpx.Client(base_url=server.url, timeout=30) as c:  # warm: the bound is for later
        assert c.post("/invocations", json=doc).status_code == 200
    stalled = [
        _stalled_post(server, "127.0.0.2", 8 * MiB),
        _stalled_post(server, "127.0.0.2", 8 * MiB, b'{"dataframe_split": '),
    ]
    stop_trickle = threading.Event()
    trickler = _stalled_post(server, "127.0.0.3", 4 * MiB)

    def trickle() -> None:  # a slow client: a byte every 0.5 s, never stalled for long
        while not stop_trickle.wait(0.5):
            try:
                trickler.sendall(b" ")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    opened = time.monotonic()
    try:
        time.sleep(0.3)  # the server has read their headers
        with httpx.Client(base_url=server.url, timeout=10) as c:
            for i in range(10):
                started = time.monotonic()
                resp = c.post("/invocations", json=doc)
                assert resp.status_code == 200, (i, resp.status_code, resp.text)
                assert time.monotonic() - started < 1.0
        stalled[0].settimeout(0.01)
        with pytest.raises(TimeoutError):  # all while the first body still stalled
            stalled[0].recv(1)

        answers = [_answer(s, BODY_TIMEOUT + 3) for s in stalled]
        # The second from 127.0.0.2 was refused at once (past that client's share of the
        # budget); the first waited for its body and got 408 once it stalled, and the
        # connection was closed.
        first, second = answers
        assert first[0].startswith("HTTP/1.1 408") and first[1], answers
        assert second[0].startswith("HTTP/1.1 503"), answers
        assert "per client" in second[0], answers
        assert time.monotonic() - opened >= BODY_TIMEOUT
        trickler.settimeout(0.05)
        with pytest.raises(TimeoutError):  # still being read: nothing answered yet
            trickler.recv(1)

        # The trickling client is not stalled: still reading, and its bytes are held, yet
        # others are scored.
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.post("/invocations", json=doc).status_code == 200
            # 127.0.0.2's share was released with the 408: that client gets in again.
            with httpx.Client(
                base_url=server.url,
                timeout=10,
                transport=httpx.HTTPTransport(local_address="127.0.0.2"),
            ) as again:
                assert again.post("/invocations", json=doc).status_code == 200
        stop_trickle.set()
        answer, was_closed = _answer(trickler, BODY_TIMEOUT + 3)
        assert answer.startswith("HTTP/1.1 408") and was_closed, (answer, was_closed)
    finally:
        stop_trickle.set()
        for s in [*stalled, trickler]:
            s.close()


@pytest.mark.slow  # its server is started for the slow tests beside it
def test_408_names_the_body_timeout(server):
    sock = _stalled_post(server, "127.0.0.4", 100, b'{"inputs"')
    try:
        sock.settimeout(BODY_TIMEOUT + 3)
        data = b""
        while piece := sock.recv(65536):
            data += piece
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert b"connection: close" in head.lower(), head
    message = json.loads(body)["message"]
    assert "--body-timeout" in message and f"{BODY_TIMEOUT:g}" in message, message


# -- row 12: text that cannot be encoded, during normal traffic -------------------------------
@pytest.mark.slow
def test_unencodable_text_is_400_and_costs_no_other_rows(server, registered, log_dir):
    """2,000 good rows in 200 concurrent requests, and one request with a lone surrogate
    in 'gender': that one is a 400 naming the column and the row; every good row is in the
    prediction log. Before: answered 200, and the log dropped the whole batch written
    with it (1,000 of 2,000 good rows lost)."""
    X = registered.X
    bad = split_body(X.iloc[10:13])
    gender = bad["dataframe_split"]["columns"].index("gender")
    bad["dataframe_split"]["data"][1][gender] = "Fe\ud800male"
    bad_body = json.dumps(bad).encode()  # ensure_ascii: the surrogate as a \ud800 escape
    assert b"\\ud800" in bad_body

    statuses: dict[str, int] = {}
    bad_answer: list[httpx.Response] = []
    go = threading.Barrier(9)

    def good(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            go.wait()
            for k in range(25):
                i = worker * 25 + k
                rid = f"good-{i:03d}"
                resp = c.post(
                    "/invocations",
                    json=split_body(X.iloc[i * 10 % 5000 : i * 10 % 5000 + 10]),
                    headers={"X-Request-ID": rid},
                )
                statuses[rid] = resp.status_code

    def bad_one() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            go.wait()
            time.sleep(0.05)  # in the middle of the good traffic
            bad_answer.append(
                c.post(
                    "/invocations",
                    content=bad_body,
                    headers={**JSON, "X-Request-ID": "bad-one"},
                )
            )

    threads = [threading.Thread(target=good, args=(w,)) for w in range(8)]
    threads.append(threading.Thread(target=bad_one))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert len(statuses) == 200 and set(statuses.values()) == {200}, statuses
    (resp,) = bad_answer
    assert resp.status_code == 400, (resp.status_code, resp.text)
    message = resp.json()["message"]
    assert "'gender'" in message and "row 1" in message and "UTF-8" in message, message

    with httpx.Client(base_url=server.url, timeout=10) as c:
        health = c.get("/health").json()["prediction_log"]
    deadline = time.monotonic() + 15
    while True:
        df = predlog.read(log_dir)
        good_rows = df[df["request_id"].str.startswith("good-")]
        if len(good_rows) >= 2000 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(good_rows) == 2000, (len(good_rows), health)
    assert sorted(set(good_rows["request_id"])) == sorted(statuses)
    assert not good_rows.duplicated(["request_id", "row"]).any()
    assert "bad-one" not in set(df["request_id"])
    assert health["rows_dropped"] == 0, health


def test_prediction_log_drops_only_the_row_it_cannot_store(tmp_path):
    """Defence behind the server's check: an append holding one value SQLite cannot bind
    (a lone surrogate) loses that row only, not the other rows committed with it."""

    class Col:
        def __init__(self, name: str, kind: str):
            self.name, self.kind = name, kind

    log = predlog.PredictionLog(tmp_path, [Col("gender", "string"), Col("tenure", "long")])
    with log:
        common = dict(model_name="m", model_version="1", variant="champion", threshold=0.5)
        log.append(
            {"gender": ["Male"] * 600, "tenure": list(range(600))},
            np.full(600, 0.2),
            request_id=[f"a{i // 10}" for i in range(600)],
            **common,
        )
        log.append(
            {"gender": ["Female", "Fe\ud800male", "Male"], "tenure": [1, 2, 3]},
            np.full(3, 0.7),
            request_id=["b0", "b1", "b2"],
            **common,
        )
        log.append({"gender": ["x"], "tenure": [9]}, np.full(1, 0.9), request_id="c", **common)
        assert log.flush(10)
        stats = log.stats()
    con = sqlite3.connect(predlog.db_path(tmp_path))
    ids = [r[0] for r in con.execute("SELECT request_id FROM predictions")]
    con.close()
    assert len(ids) == 603, len(ids)
    assert "b1" not in ids and {"b0", "b2", "c"} <= set(ids)
    assert stats["rows_written"] == 603 and stats["rows_dropped"] == 1, stats


def test_v2_and_records_name_the_column_of_unencodable_text():
    """Every JSON protocol checks the text orjson refused, naming column and row; bodies
    orjson took are valid Unicode and skip the check."""
    columns = [Column("gender", "string"), Column("tenure", "long")]
    v2 = (
        b'{"inputs": [{"name": "gender", "datatype": "BYTES", "shape": [2], "data": ["a", '
        b'"b\\udc00"]}, {"name": "tenure", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}'
    )
    with pytest.raises(RequestError, match=r"column 'gender': text that cannot be encoded"):
        parse_v2(v2, None, columns)
    records = b'{"dataframe_records": [{"gender": "\\ud800", "tenure": 1}]}'
    with pytest.raises(RequestError, match=r"'gender'.*UTF-8.*row 0 \(dataframe_records\)"):
        parse_mlflow_json(records, columns)
    pair = b'{"dataframe_records": [{"gender": "\\ud83d\\ude00", "tenure": 1}]}'
    assert parse_mlflow_json(pair, columns).columns["gender"].tolist() == ["\U0001f600"]


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_body_timeout_must_be_a_positive_number(seconds):
    with pytest.raises(ServeError, match="--body-timeout"):
        ServeOptions("models:/m@champion", body_timeout=seconds)
