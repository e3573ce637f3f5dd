"""The team services, started the way users run them: PostgreSQL databases (on the local
server), ``moto_server`` as the S3 endpoint, and ``mlflow server`` as a subprocess with a
PostgreSQL backend store and S3 artifacts (proxied by the server, or written by the
client straight to S3).

One instance per test session (see the ``team_services`` fixture in conftest.py): an
MLflow server takes seconds to start and every end-to-end run adds to CI time.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import require_service

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES = "PostgreSQL at 127.0.0.1:5432"
PG_HOST = "postgres@127.0.0.1:5432"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    stop(proc)
    pytest.fail(f"{url} did not answer (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (mlflow server starts uvicorn under it), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)


@dataclass
class TeamServices:
    """What a team's parameter file points at; ``env`` is what every process needs."""

    tracking_uri: str  # the proxied server: artifacts go through it to S3
    direct_tracking_uri: str  # --default-artifact-root: clients write straight to S3
    s3_endpoint: str
    bucket: str
    env: dict[str, str]
    workdir: Path
    databases: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def new_database(self, prefix: str = "mlfolio") -> str:
        """A new, empty PostgreSQL database (dropped at the end of the session)."""
        name = create_database(prefix)
        self.databases.append(name)
        return f"postgresql+psycopg://{PG_HOST}/{name}"

    def s3_client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_keys())

    def s3_keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.s3_client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        for name in self.databases:
            drop_database(name)


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


def _admin(sql: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def create_database(prefix: str) -> str:
    """A new, empty database on the local PostgreSQL (its name), or require_service's
    skip (failure under MLFOLIO_REQUIRE_SERVICES=1) saying why."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - no server, or no right to create databases
        require_service(POSTGRES, False, str(exc).splitlines()[0])
    return name


def drop_database(name: str) -> None:
    try:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:  # noqa: BLE001 - the server may be gone; nothing to keep
        pass


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def spawn_mlflow_server(
    database: str, artifacts: list[str], port: int, env: dict[str, str], log: Path
) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` with one worker, its output in ``log``."""
    env = {
        **env,
        # Jobs need huey workers; the tests use none of them.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["--backend-store-uri", database, *artifacts, "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", "1"]
    return _spawn([str(BIN / "mlflow"), "server", *args], env, log)


def _mlflow_server(team: TeamServices, database: str, artifacts: list[str], name: str) -> str:
    port = free_port()
    log = team.workdir / f"{name}.log"
    proc = spawn_mlflow_server(database, artifacts, port, {**os.environ, **team.env}, log)
    team.procs.append(proc)
    return f"http://127.0.0.1:{port}", proc, log


def start(workdir: Path) -> TeamServices:
    """PostgreSQL databases, moto_server with a bucket, and two MLflow servers on them."""
    try:
        _admin("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - say why the team tests cannot run
        require_service(POSTGRES, False, str(exc).splitlines()[0])
    s3_port = free_port()
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    team = TeamServices(
        tracking_uri="",
        direct_tracking_uri="",
        s3_endpoint=s3_endpoint,
        bucket=f"mlfolio-team-{secrets.token_hex(3)}",
        env={**AWS_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
        workdir=workdir,
    )
    try:
        log = workdir / "moto.log"
        moto = _spawn(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
            {**os.environ, **team.env},
            log,
        )
        team.procs.append(moto)
        _wait_http(f"{s3_endpoint}/moto-api/", moto, log)
        team.s3_client().create_bucket(Bucket=team.bucket)
        # Both servers migrate their databases at the same time (~15 s each).
        proxied = _mlflow_server(
            team,
            team.new_database("mlflow_proxied"),
            ["--artifacts-destination", f"s3://{team.bucket}/proxied"],
            "mlflow-proxied",
        )
        direct = _mlflow_server(
            team,
            team.new_database("mlflow_direct"),
            ["--no-serve-artifacts", "--default-artifact-root", f"s3://{team.bucket}/direct"],
            "mlflow-direct",
        )
        for url, proc, log in (proxied, direct):
            _wait_http(f"{url}/health", proc, log)
        team.tracking_uri, team.direct_tracking_uri = proxied[0], direct[0]
    except BaseException:
        team.close()
        raise
    return team
