"""``mlfolio tune-job``: the tune stage submitted as a SageMaker training job, against a
real moto server on loopback (CreateTrainingJob accepted, DescribeTrainingJob answering
the spot settings and the checkpoint location, the inputs in S3)."""

from __future__ import annotations

import json
import uuid

import pytest

from mlfolio import cli, config
from mlfolio.cli import jobs

from . import test_deploy_aws
from .conftest import CHURN_PARAMS
from .test_deploy_aws import REGION, new_bucket

# the deploy tests' moto server (module-scoped) and credentials with an IAM role on it
moto_endpoint = test_deploy_aws.moto_endpoint
aws = test_deploy_aws.aws

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlfolio:1"


@pytest.fixture
def run_dir(tmp_path, parts):
    run = tmp_path / "runs" / "churn-20261206"
    (run / "data").mkdir(parents=True)
    parts["train"].to_parquet(run / "data" / "train.parquet", index=False)
    return run


def spot_params(aws, bucket: str) -> dict:
    return {
        "sagemaker.image_uri": IMAGE,
        "sagemaker.role_arn": aws.role_arn,
        "sagemaker.spot": True,
        "sagemaker.max_wait_s": 7200,
        "sagemaker.checkpoint_s3_uri": f"s3://{bucket}/checkpoints",
        "stages.tune.timeout_s": 3600,
        "deploy.aws.bucket": bucket,
        "deploy.aws.region": REGION,
        "deploy.aws.endpoint_url": aws.endpoint,
        "tuning.warm_start": "baseline",
    }


def test_submit_creates_a_spot_job_moto_describes(aws, run_dir):
    bucket = new_bucket(aws)
    cfg = config.load(CHURN_PARAMS, spot_params(aws, bucket))
    job = jobs.submit(cfg, run_dir, "churn-tune-1")
    described = aws.client("sagemaker").describe_training_job(TrainingJobName="churn-tune-1")
    for answer in (job, described):
        assert answer["EnableManagedSpotTraining"] is True
        assert answer["StoppingCondition"] == {
            "MaxRuntimeInSeconds": 3600,
            "MaxWaitTimeInSeconds": 7200,
        }
        assert answer["CheckpointConfig"] == {
            "S3Uri": f"s3://{bucket}/checkpoints/churn-churn-20261206/",
            "LocalPath": "/opt/ml/checkpoints",
        }
        assert answer["AlgorithmSpecification"]["ContainerEntrypoint"] == [
            "mlfolio",
            "tune-job",
            "--in-container",
        ]
        assert answer["RoleArn"] == aws.role_arn
    # the two input channels are in S3 where the request points
    s3 = aws.client("s3")
    prefix = "mlfolio/churn/tune-jobs/churn-tune-1/input"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert keys == {f"{prefix}/spec/spec.json", f"{prefix}/train/train.parquet"}
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in described["InputDataConfig"]
    }
    assert channels == {
        "spec": f"s3://{bucket}/{prefix}/spec/",
        "train": f"s3://{bucket}/{prefix}/train/",
    }
    spec = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/spec/spec.json")["Body"].read())
    assert spec["study_name"] == "churn-churn-20261206"  # the tune stage's study of the run
    assert spec["first_trial"] and spec["first_trial_note"] == "baseline training.xgboost"
    assert "data" not in spec and "deploy" not in spec


def test_cli_submits_and_says_where_the_checkpoints_go(aws, run_dir, capsys):
    bucket = new_bucket(aws)
    overrides = [f"{k}={v}" for k, v in spot_params(aws, bucket).items()]
    args = ["tune-job", str(CHURN_PARAMS), "--run-dir", str(run_dir), "--job-name", "cli-job"]
    assert cli.main(args + sum((["-p", o] for o in overrides), [])) == 0
    err = capsys.readouterr().err
    assert "submitted cli-job (arn:aws:sagemaker:us-east-1:" in err
    assert f"spot on, checkpoints s3://{bucket}/checkpoints/churn-churn-20261206/" in err
    # the same name again: refused before anything is uploaded over the job's inputs
    assert cli.main(args + sum((["-p", o] for o in overrides), [])) == 2
    assert "--job-name: training job cli-job exists already" in capsys.readouterr().err


def test_cli_refuses_before_any_upload(tmp_path, capsys):
    assert cli.main(["tune-job", str(CHURN_PARAMS), "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "sagemaker.image_uri" in err and "deploy.aws.bucket" in err
    over = [
        "-p",
        f"sagemaker.image_uri={IMAGE}",
        "-p",
        "deploy.aws.bucket=b-1",
        "-p",
        "deploy.aws.role_arn=arn:r",
    ]
    assert cli.main(["tune-job", str(CHURN_PARAMS), "--run-dir", str(tmp_path), *over]) == 2
    assert "--run-dir: no such file:" in capsys.readouterr().err
    assert cli.main(["tune-job", str(CHURN_PARAMS)]) == 2
    assert "give PARAMS_FILE and --run-dir RUN" in capsys.readouterr().err


def spot_iam_policies() -> list[dict]:
    """The JSON policies of docs/aws.md's managed spot section: the job's, the caller's."""
    import re

    text = (CHURN_PARAMS.parents[1] / "docs" / "aws.md").read_text()
    section = text[text.index("## Managed spot training") :]
    section = section[section.index("### IAM") : section.index("\n## ")]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_the_documented_spot_iam_policies_are_valid_and_cover_the_calls(aws):
    execution, caller = spot_iam_policies()
    iam = aws.client("iam")
    for name, policy in (("spot-execution", execution), ("spot-caller", caller)):
        iam.create_policy(
            PolicyName=f"mlfolio-{name}-{uuid.uuid4().hex[:6]}", PolicyDocument=json.dumps(policy)
        )

    def actions(policy: dict) -> set[str]:
        found = [s["Action"] for s in policy["Statement"]]
        return {a for f in found for a in ([f] if isinstance(f, str) else f)}

    # the job reads its inputs and writes its output and checkpoints, pulls its image, logs
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "ecr:BatchGetImage"} <= actions(
        execution
    )
    assert "logs:PutLogEvents" in actions(execution)
    # what jobs.submit calls
    assert {
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:AddTags",
        "s3:PutObject",
        "iam:PassRole",
    } <= actions(caller)
