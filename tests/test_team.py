"""The team setup: an MLflow tracking server on PostgreSQL with S3 artifacts (moto), and
Optuna studies on PostgreSQL. The registry path runs against both server modes (artifacts
proxied by the server; clients writing straight to S3); the whole pipeline, `mlfolio
serve` and `mlfolio monitor` run against the proxied one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import sqlalchemy
import yaml
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

from mlfolio import config, data, features, registry, tracking
from mlfolio.pipeline.manifest import Manifest

from .conftest import CHURN_CSV, CHURN_PARAMS, ROOT, SMALL, deep_update
from .servers import split_body, start_server, stop_server


@pytest.fixture(scope="module")
def fitted():
    cfg = config.load(CHURN_PARAMS)
    df = data.validate(data.load_source(cfg.data), cfg.schema).head(600)
    X, y = features.xy(df, cfg.schema)
    model = features.build_model_pipeline(cfg.schema, LogisticRegression(max_iter=500))
    return cfg, model.fit(X, y), X


@pytest.mark.slow  # the team services start in the slow tier only
@pytest.mark.parametrize("mode", ["proxied", "direct"])
def test_registry_on_the_tracking_server(team_env, fitted, mode):
    """Log, register, promote (compare-and-set), read the alias history and load the
    champion back through the server. Before the fix, registering a logged model's
    ``models:/m-…`` URI failed on the server: ``INVALID_PARAMETER_VALUE: Invalid model
    version source``."""
    cfg, model, X = fitted
    uri = team_env.tracking_uri if mode == "proxied" else team_env.direct_tracking_uri
    name = f"team-{mode}-{os.getpid()}"
    cfg = cfg.model_copy(
        update={
            "experiment": name,
            "tracking": cfg.tracking.model_copy(update={"tracking_uri": uri}),
        }
    )
    tracking.configure(cfg)
    try:
        refs = []
        for _ in range(2):
            with mlflow.start_run() as run:
                model_uri = tracking.log_model(model, X, schema=cfg.schema)
            refs.append(registry.register(name, model_uri, run.info.run_id, {"k": "v"}))
        assert [r.version for r in refs] == ["1", "2"]
        assert registry.promote(refs[0], None, "first", "/runs/a").promoted
        late = registry.promote(refs[1], None, "saw no champion", "/runs/b")
        assert not late.promoted and late.champion == "1"
        assert registry.promote(refs[1], "1", "beats v1", "/runs/c").promoted
        moves = [(e["previous_version"], e["version"]) for e in registry.alias_history(name)]
        assert moves == [(None, "1"), ("1", "2")]

        loaded = tracking.load_model(f"models:/{name}@champion")
        assert (loaded.predict_proba(X.head(5)) == model.predict_proba(X.head(5))).all()
        # The model files are in the bucket, under the prefix this server mode writes to.
        keys = team_env.s3_keys(f"{mode}/")
        assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def team_parameters(team, tmp_path, name: str, **sections) -> tuple[Path, str]:
    """parameters/team.example.yaml with its hosts replaced by the test's services, small
    settings, and an experiment (and model) of its own on the shared server; also returns
    the Optuna database URL."""
    raw = yaml.safe_load((ROOT / "parameters" / "team.example.yaml").read_text())
    optuna_db = team.new_database("optuna")
    raw = deep_update(raw, SMALL)
    raw = deep_update(
        raw,
        {
            "experiment": name,
            "data": {"uri": str(CHURN_CSV)},
            "tuning": {"storage": optuna_db, "n_workers": 2},
            "registry": {
                "model_name": f"{name}-classifier",
                "lock_uri": team.new_database("locks"),
            },
            "tracking": {"tracking_uri": team.tracking_uri, "ui_url": team.tracking_uri},
            "deploy": {"targets": ["local", "kubernetes"]},
        },
    )
    raw = deep_update(raw, sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, optuna_db


def sagemaker_role(team) -> str:
    """An IAM role SageMaker may assume, on the team services' moto server."""
    import boto3

    iam = boto3.client("iam", endpoint_url=team.s3_endpoint, region_name="us-east-1")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Principal": {"Service": "sagemaker.amazonaws.com"},
            }
        ],
    }
    try:
        return iam.get_role(RoleName="mlfolio-sagemaker")["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        return iam.create_role(
            RoleName="mlfolio-sagemaker", AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]


def mlfolio(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The CLI, as a user runs it (the team variables are in this process's environment)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "mlfolio"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd="/",  # nothing may depend on the working directory
    )


@pytest.mark.slow
def test_pipeline_serve_and_monitor_against_the_team_services(team_env, tmp_path):
    """`mlfolio run` promotes into the server's registry (notebooks in S3, trials in
    PostgreSQL), `mlfolio serve` serves the champion through the server, and `mlfolio
    monitor` finds the reference data in the server's artifacts."""
    name = f"team-e2e-{os.getpid()}"
    # ... and deploys to SageMaker Serverless Inference (the moto server), memory sized
    # from the served model's measured peak (issue 23's measure)
    serverless = {"memory_mb": "auto", "max_concurrency": 5}
    deploy = {
        "targets": ["local", "kubernetes", "sagemaker"],
        "aws": {
            "region": "us-east-1",
            "endpoint_url": team_env.s3_endpoint,
            "role_arn": sagemaker_role(team_env),
            "bucket": team_env.bucket,
        },
        "sagemaker": {
            "endpoint_name": name,
            "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlfolio-serve:1",
            "serverless": serverless,
        },
    }
    params, optuna_db = team_parameters(team_env, tmp_path, name, deploy=deploy)
    cfg = config.load(params)
    runs = tmp_path / "runs"
    proc = mlfolio("run", str(params), "--runs-root", str(runs))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = runs.iterdir()
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "succeeded"
    assert manifest["mlflow"]["tracking_uri"] == team_env.tracking_uri

    # The registry on the server: a champion with its alias history.
    client = MlflowClient(team_env.tracking_uri, registry_uri=team_env.tracking_uri)
    champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    register = json.loads((run_dir / "register.json").read_text())
    assert register["version"] == champion.version == "1"
    history = json.loads(
        client.get_registered_model(cfg.model_name).tags[
            next(
                k
                for k in client.get_registered_model(cfg.model_name).tags
                if k.startswith(registry.EVENT_PREFIX) and k.endswith(".champion")
            )
        ]
    )
    assert history["run_dir"] == str(run_dir) and history["compared_against"] is None

    # Kubernetes pods get the team's tracking URI (a local store would warn: unreachable).
    k8s = json.loads((run_dir / "deploy.json").read_text())["targets"]["kubernetes"]
    assert k8s["tracking_uri"] == team_env.tracking_uri
    assert not [w for w in k8s["warnings"] if "local store" in w], k8s["warnings"]

    # A serverless endpoint configuration with a valid size, chosen from the measurement.
    sm_target = json.loads((run_dir / "deploy.json").read_text())["targets"]["sagemaker"]
    assert sm_target["status"] == "deployed", sm_target
    sizing = sm_target["serverless_sizing"]
    assert 100 < sizing["measured_peak_rss_mb"] < 6144 / 1.25, sizing
    assert sizing["needed_mb"] == pytest.approx(sizing["measured_peak_rss_mb"] * 1.25, abs=0.1)
    assert sizing["memory_mb"] in (1024, 2048, 3072, 4096, 5120, 6144)
    assert sizing["memory_mb"] - 1024 < sizing["needed_mb"] <= sizing["memory_mb"]
    assert sizing["rows_sent"] == len(pd.read_parquet(run_dir / "data" / "test.parquet"))
    assert sm_target["outcome"] == (
        f"deployed (Serverless Inference, {sizing['memory_mb']} MB, sized from a "
        f"{sizing['measured_peak_rss_mb']:.0f} MB peak, up to 5 at once)"
    )
    sm = boto3.client("sagemaker", endpoint_url=team_env.s3_endpoint, region_name="us-east-1")
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=sm_target["endpoint_config_name"])[
        "ProductionVariants"
    ]
    assert variant["ServerlessConfig"] == {
        "MemorySizeInMB": sizing["memory_mb"],
        "MaxConcurrency": 5,
    }
    assert "InstanceType" not in variant
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"

    # Executed notebooks and their HTML went through the server to S3.
    keys = team_env.s3_keys("proxied/")
    for stage in ("01_ingest", "04_tune", "06_register", "07_deploy"):
        assert any(k.endswith(f"/run/{stage}.ipynb") for k in keys), stage
        assert any(k.endswith(f"/run/{stage}.html") for k in keys), stage
    assert any(k.endswith("/data/train.parquet") for k in keys)

    # The study's trials are in PostgreSQL, all finished, run by both workers.
    engine = sqlalchemy.create_engine(optuna_db)
    try:
        with engine.connect() as conn:
            states = dict(
                conn.exec_driver_sql("SELECT state, count(*) FROM trials GROUP BY state").all()
            )
    finally:
        engine.dispose()
    assert sum(states.values()) == cfg.tuning.n_trials
    assert set(states) <= {"COMPLETE", "PRUNED"}, states

    # `mlfolio serve` loads the champion through the server.
    test_rows = pd.read_parquet(run_dir / "data" / "test.parquet")
    server = start_server(SimpleNamespace(tracking_uri=team_env.tracking_uri), name=cfg.model_name)
    try:
        features_ = test_rows[list(cfg.schema.features)].head(5)
        resp = requests.post(f"{server.url}/invocations", json=split_body(features_), timeout=30)
        assert resp.status_code == 200, resp.text
        served = np.asarray(resp.json()["predictions"], dtype=float)
        mlflow.set_tracking_uri(team_env.tracking_uri)
        mlflow.set_registry_uri(team_env.tracking_uri)
        model = tracking.load_model(f"models:/{cfg.model_name}@champion")
        np.testing.assert_allclose(served, model.predict_proba(features_), rtol=1e-9)
    finally:
        stop_server(server.proc)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)

    # `mlfolio monitor` on another machine: the run folder is not there, the reference
    # rows come from the pipeline run's artifacts on the server.
    current = tmp_path / "current.parquet"
    test_rows.drop(columns=[cfg.schema.target]).to_parquet(current)
    shutil.move(run_dir, tmp_path / "elsewhere")
    proc = mlfolio(
        "monitor", str(params), "--current", str(current), "--dry-run", "--runs-root", str(runs)
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (monitor_dir,) = runs.iterdir()
    doc = json.loads((monitor_dir / "monitor.json").read_text())
    assert doc["reference"]["uri"].startswith("runs:/"), doc["reference"]
    trained_on = pd.read_parquet(tmp_path / "elsewhere" / "data" / "train.parquet")
    assert doc["reference"]["rows"] == len(trained_on)
