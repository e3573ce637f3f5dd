"""The sagemaker target as SageMaker runs it: the model created (on a moto server) with the
archive and its environment, then the serving image's ENTRYPOINT (from the generated
Dockerfile, parsed with BuildKit's parser) started as ``docker run IMAGE serve`` with
``model.tar.gz`` unpacked where ``/opt/ml/model`` would be; /ping and /invocations over HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlfolio.deploy import kubernetes as k8s
from mlfolio.deploy.sagemaker import MODEL_DIR, build_model_archive, deploy_sagemaker

from .conftest import require_module
from .servers import MODEL, THRESHOLDS, Registered, register_models, typed_value

dockerfile = require_module("dockerfile", "BuildKit's parser (from PyPI) reads the Dockerfile")

REGION = "us-east-1"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlfolio-serve:1"


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    return register_models(tmp_path_factory.mktemp("sagemaker-container"))


@pytest.fixture(scope="module")
def archive(registered, tmp_path_factory) -> Path:
    """model.tar.gz of the champion (version 1), built from its registry URI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
        return build_model_archive(
            f"models:/{MODEL}/1", tmp_path_factory.mktemp("archive") / "model.tar.gz"
        )


@pytest.fixture(scope="module")
def sagemaker_model(moto_url, archive) -> Iterator[dict[str, Any]]:
    """Deploy the archive to the moto server; the SageMaker model as SageMaker describes it.
    AWS settings stay in the environment while the module's tests run."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        iam = boto3.client("iam", endpoint_url=moto_url)
        role = iam.create_role(
            RoleName="sm-container",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sts:AssumeRole",
                            "Principal": {"Service": "sagemaker.amazonaws.com"},
                        }
                    ],
                }
            ),
        )["Role"]["Arn"]
        boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket="sm-container")
        result = deploy_sagemaker(
            archive,
            endpoint_name="churn-container",
            image_uri=IMAGE,
            role_arn=role,
            bucket="sm-container",
            model_version=1,
            endpoint_url=moto_url,
            poll_s=0.1,
            wait_timeout_s=30,
            model_name=MODEL,
            threshold=THRESHOLDS["champion"],
        )
        sm = boto3.client("sagemaker", endpoint_url=moto_url)
        yield sm.describe_model(ModelName=result["model_name"])


def image_command() -> tuple[list[str], dict[str, str]]:
    """The serving image's ENTRYPOINT and ENV, from the generated Dockerfile."""
    settings = k8s.KubernetesSettings.from_mapping(
        {
            "model_name": MODEL,
            "model_version": "1",
            "image": IMAGE,
            "tracking_uri": "http://mlflow.example:5000",
        }
    )
    commands = dockerfile.parse_string(k8s.dockerfile(settings))
    env: dict[str, str] = {}
    for c in commands:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    (entry,) = [c for c in commands if c.cmd == "ENTRYPOINT"]
    assert entry.json, "a shell-form ENTRYPOINT would ignore SageMaker's `serve` argument"
    return list(entry.value), env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_container_serves_the_archive_as_sagemaker_runs_it(
    registered, archive, sagemaker_model, tmp_path
):
    container = sagemaker_model["PrimaryContainer"]
    assert container["Image"] == IMAGE
    entrypoint, image_env = image_command()
    # `docker run IMAGE serve`: SageMaker's argument replaces CMD, after the ENTRYPOINT
    argv = [*entrypoint, "serve"]
    model_dir = tmp_path / "opt/ml/model"
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")  # what SageMaker does with ModelDataUrl
    port = free_port()
    env = {**image_env, **container.get("Environment", {})}
    assert env.get("PORT") == "8080"  # SageMaker's port; this test needs a free one
    env = {k: str(model_dir) if v == MODEL_DIR else v for k, v in env.items()}
    env.update(
        PORT=str(port), HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin"
    )
    proc = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                time.sleep(0.2)
                pytest.fail(f"the container exited with {proc.returncode}:\n{''.join(log)}")
            try:
                ping = httpx.get(f"{url}/ping", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer on {url}/ping:\n{''.join(log)}")
                time.sleep(0.25)
        assert ping.status_code == 200

        health = httpx.get(f"{url}/health", timeout=10).json()
        assert (health["model"], health["version"]) == (MODEL, "1")
        assert health["threshold"] == THRESHOLDS["champion"]
        assert health["model_uri"] == str(model_dir)

        meta = httpx.get(f"{url}/v2/models/{MODEL}", timeout=10).json()
        names = [spec["name"] for spec in meta["inputs"]]
        types = {spec["name"]: spec["datatype"] for spec in meta["inputs"]}
        X = registered.X.iloc[78:90].reset_index(drop=True)  # row 83: blank totalcharges
        expected = registered.models["champion"].predict_proba(X)[:, 1]

        # CSV without a header row, values in signature order, as SageMaker clients send it
        text = io.StringIO()
        csv.writer(text).writerows(X[names].astype(str).values.tolist())
        resp = httpx.post(
            f"{url}/invocations",
            content=text.getvalue(),
            headers={"Content-Type": "text/csv"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        np.testing.assert_allclose(
            np.asarray(answer["predictions"])[:, 1], expected, rtol=0, atol=1e-12
        )
        assert answer["labels"] == (expected >= THRESHOLDS["champion"]).astype(int).tolist()
        assert answer["threshold"] == THRESHOLDS["champion"]

        # one JSON row
        row = {c: typed_value(v, types[c]) for c, v in X.iloc[5][names].items()}
        resp = httpx.post(f"{url}/invocations", json={"dataframe_records": [row]}, timeout=30)
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(
            np.asarray(resp.json()["predictions"])[:, 1], expected[5:6], rtol=0, atol=1e-12
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the shell exec'd mlfolio: this is the server
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # uvicorn re-raises the SIGTERM it handled, after a graceful shutdown
    assert proc.returncode in (0, -signal.SIGTERM), "".join(log)
    assert not re.search(r"Traceback", "".join(log)), "".join(log)


def test_model_directory_errors_name_the_path(tmp_path):
    from mlfolio import serve

    with pytest.raises(serve.ServeError, match="no such directory"):
        serve.load(str(tmp_path / "missing"))
    with pytest.raises(serve.ServeError, match="not an MLflow model directory"):
        serve.load(str(tmp_path))
    with pytest.raises(serve.ServeError, match="expected models:/<name>@<alias>"):
        serve.load("s3://bucket/model")


def test_deploy_stage_gives_the_container_its_threshold(
    registered, moto_url, sagemaker_model, tmp_path, monkeypatch
):
    """The deploy stage's sagemaker dispatch puts the version's threshold and name in the
    SageMaker model's environment (the container cannot ask the registry)."""
    import boto3
    import mlflow
    import yaml

    from mlfolio import config, stages
    from mlfolio.context import StageContext

    from .conftest import CHURN_PARAMS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.tracking_uri)
    raw = yaml.safe_load(CHURN_PARAMS.read_text())
    raw["registry"] = {"model_name": MODEL}
    role = sagemaker_model["ExecutionRoleArn"]
    raw["deploy"] = {
        "targets": ["sagemaker"],
        "aws": {
            "region": REGION,
            "endpoint_url": moto_url,
            "role_arn": role,
            "bucket": "sm-container",
        },
        "sagemaker": {"endpoint_name": "stage-container", "image_uri": IMAGE},
    }
    ctx = StageContext(stage="deploy", cfg=config.from_mapping(raw), run_dir=tmp_path)
    try:
        with mlflow.start_run():
            result = stages.deploy_model(ctx)
    finally:
        mlflow.set_tracking_uri(None)
    target = result["targets"]["sagemaker"]
    assert target["status"] == "deployed", target
    sm = boto3.client("sagemaker", endpoint_url=moto_url)
    env = sm.describe_model(ModelName=target["model_name"])["PrimaryContainer"]["Environment"]
    assert env == {
        "MODEL_URI": MODEL_DIR,
        "PORT": "8080",
        "MLFOLIO_MODEL_VERSION": "1",
        "MLFOLIO_MODEL_NAME": MODEL,
        "MLFOLIO_THRESHOLD": repr(THRESHOLDS["champion"]),
    }
