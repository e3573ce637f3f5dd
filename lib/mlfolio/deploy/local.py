"""The local target: serve the model with ``mlfolio serve``, check its answers, then stop
it (``checked``) or leave it serving (``deploy.local.keep_serving``: ``serving``).

The check is the point: the real server, started from the registry exactly as a user
would start it, must answer the test rows with the probabilities the pipeline computes
in process. A checked server is stopped: nothing serves afterwards, and the records say
so. To keep one running, set ``deploy.local.keep_serving`` (its URL and process id are
recorded) or run the command recorded in ``deploy.json``.

:func:`measure_serve_memory` starts the same server to read its peak resident memory
after a request (what ``deploy.sagemaker.serverless.memory_mb: auto`` sizes from).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.deploy import DeployError
from mlfolio.procstat import peak_rss_mb
from mlfolio.serve.contract import INVOCATIONS_PATH, LIVENESS_PATH, TOKEN_ENV


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _request(
    url: str, body: bytes | None = None, timeout: float = 10.0, token: str | None = None
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def serve_command(model_uri: str, host: str, port: int, tracking_uri: str) -> list[str]:
    exe = Path(sys.executable).parent / "mlfolio"
    return [
        str(exe),
        "serve",
        "--model",
        model_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--tracking-uri",
        tracking_uri,
    ]


def _spawn(
    model_uri: str, tracking_uri: str, host: str, port: int, log: Any, new_session: bool = False
) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``mlfolio serve``: the process, its URL and its command."""
    port = port or _free_port(host)
    cmd = serve_command(model_uri, host, port, tracking_uri)
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=new_session)
    return proc, f"http://{host}:{port}", cmd


def _wait_ready(
    proc: subprocess.Popen, url: str, cmd: list[str], log_path: Path | None, timeout: float
) -> None:
    """Until /ping answers 200; DeployError if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DeployError(
                f"local: `{shlex.join(cmd)}` exited with code "
                f"{proc.returncode} before it was ready (see {log_path})"
            )
        try:
            if _request(f"{url}{LIVENESS_PATH}", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DeployError(f"local: {url}{LIVENESS_PATH} not ready after {timeout:.0f} s")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _score(url: str, rows: pd.DataFrame) -> tuple[dict[str, Any], int]:
    """POST ``rows`` (``dataframe_split``) to the server; its answer and the body's size."""
    payload = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    body = json.dumps(payload).encode()
    try:
        status, answer = _request(
            f"{url}{INVOCATIONS_PATH}", body, timeout=60, token=os.environ.get(TOKEN_ENV)
        )
    except OSError as exc:  # reset, refused, timed out: no HTTP answer at all
        raise DeployError(
            f"local: POST {url}{INVOCATIONS_PATH} ({len(rows)} rows, {len(body)} bytes) "
            f"got no answer: {exc}"
        ) from exc
    if status != 200:
        raise DeployError(
            f"local: POST {url}{INVOCATIONS_PATH} answered {status}: "
            f"{answer[:500].decode(errors='replace')}"
        )
    return json.loads(answer), len(body)


@contextmanager
def running_server(
    model_uri: str,
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``mlfolio serve`` on ``model_uri`` on a free port of ``host``, once its /ping
    answers: (the process, its URL); stopped on leaving. DeployError when it exits or is
    not ready within ``ready_timeout`` seconds."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc, url, cmd = _spawn(model_uri, tracking_uri, host, 0, log)
    try:
        _wait_ready(proc, url, cmd, log_path, ready_timeout)
        yield proc, url
    finally:
        _stop(proc)
        if log_path:
            log.close()


def score_rows(url: str, rows: pd.DataFrame) -> tuple[dict[str, Any], int]:
    """POST ``rows`` (``dataframe_split``) to the server at ``url``: its answer and the
    body's size. DeployError without an answer or on a status other than 200."""
    return _score(url, rows)


def measure_serve_memory(
    model_uri: str,
    tracking_uri: str,
    rows: pd.DataFrame,
    *,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    ready_timeout: float = 120.0,
) -> dict[str, Any]:
    """Start ``mlfolio serve`` on ``model_uri``, send ``rows`` in one request, and read the
    server process's peak resident memory (``VmHWM``) before stopping it: what one serving
    container needs at least, model loaded and a request of that size scored.

    Returns ``peak_rss_mb``, ``rows_sent`` and ``request_bytes``. Raises DeployError when
    the server does not start or answer, or where ``/proc`` cannot be read (not Linux)."""
    with running_server(
        model_uri, tracking_uri, host=host, log_path=log_path, ready_timeout=ready_timeout
    ) as (proc, url):
        _, request_bytes = _score(url, rows)
        peak = peak_rss_mb(proc.pid)
        if peak is None:
            raise DeployError(
                f"local: cannot read the peak memory of the server (pid {proc.pid}) from "
                f"/proc/{proc.pid}/status (VmHWM); measuring needs Linux"
            )
        return {"peak_rss_mb": peak, "rows_sent": int(len(rows)), "request_bytes": request_bytes}


def deploy_local(
    model_uri: str,
    tracking_uri: str,
    rows: pd.DataFrame,
    expected: np.ndarray,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_path: Path | None = None,
    ready_timeout: float = 120.0,
    keep_serving: bool = False,
) -> dict[str, Any]:
    """Start the server, wait for /ping, compare its answers on ``rows`` with ``expected``
    (positive-class probabilities), and return what was checked: ``status`` ``checked``
    (the server was stopped) or, with ``keep_serving``, ``serving`` (left running in its
    own session, so the stage's kernel ending does not stop it; ``pid`` recorded). A
    failed check always stops it.

    The server inherits the environment: with ``$MLFOLIO_SERVE_TOKEN`` set it requires that
    token, and the check sends it."""
    if log_path:  # the run folder may have no logs/ yet (a stage on a cold kernel)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc, url, cmd = _spawn(model_uri, tracking_uri, host, port, log, keep_serving)
    checked = False
    try:
        _wait_ready(proc, url, cmd, log_path, ready_timeout)
        answer, _ = _score(url, rows)
        served = np.asarray(answer["predictions"], dtype=float)[:, 1]
        diff = float(np.max(np.abs(served - np.asarray(expected, dtype=float))))
        if not diff <= 1e-9:
            raise DeployError(
                f"local: the server's probabilities differ from the pipeline's "
                f"by up to {diff:.3g} on {len(rows)} test rows"
            )
        checked = True
        result = {
            "status": "serving" if keep_serving else "checked",
            "url": url,
            "model_uri": model_uri,
            "rows_checked": int(len(rows)),
            "max_abs_difference": diff,
            "answers_match_pipeline": True,
            "serve_command": shlex.join(serve_command(model_uri, host, 8080, tracking_uri)),
        }
        if keep_serving:
            result["pid"] = proc.pid
        return result
    finally:
        if not (checked and keep_serving):
            _stop(proc)
        if log_path:
            log.close()
