"""``mlfolio tune-job``: the tune stage as a SageMaker training job (managed spot capacity
with ``sagemaker.spot``), and the same command's entry inside the job's container.

Submitting uploads the job's two inputs under ``s3://<deploy.aws.bucket>/mlfolio/
<experiment>/tune-jobs/<job>/`` (``spec.json``: what the study needs, no data location or
secret; ``train.parquet``: the run's preprocessed training rows) and calls
CreateTrainingJob with the request :func:`mlfolio.tune.spot.training_job_request` builds.
In the container (``--in-container``) :func:`mlfolio.tune.spot.run_job` runs or resumes
the study in the checkpoint folder. The AWS calls are plain boto3 (the deploy targets'
helpers), as in :mod:`mlfolio.deploy.sagemaker`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlfolio import config
from mlfolio.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    job = sub.add_parser(
        "tune-job",
        help="run the tune stage as a SageMaker training job (managed spot with sagemaker.spot)",
        description="Submit the tune stage of run folder RUN as a SageMaker training job: "
        "the study lives in the job's checkpoint folder (sagemaker.checkpoint_s3_uri), so "
        "a job restarted after a spot interruption resumes it without re-running a "
        "finished trial. Needs sagemaker.image_uri, a role (sagemaker.role_arn or "
        "deploy.aws.role_arn) and deploy.aws.bucket. --in-container is the job's own "
        "entry point. Exit 0: submitted (or, in the container, done); 1: an AWS call "
        "failed; 2: bad parameters; 143: stopped by SIGTERM (a spot interruption).",
    )
    job.add_argument("params_file", nargs="?", help="YAML parameter file (not in the container)")
    job.add_argument(
        "--run-dir", metavar="RUN", help="the run whose data/train.parquet is tuned on"
    )
    job.add_argument("--job-name", metavar="NAME", help="default: '<study>-<UTC time>'")
    job.add_argument(
        "--in-container", action="store_true", help="run the study (the training job's entry)"
    )
    job.add_argument("--opt-ml", default="/opt/ml", help=argparse.SUPPRESS)  # tests, benchmarks
    config.add_override_option(job)
    job.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def command(args: argparse.Namespace, echo: Callable[[str], None]) -> None:
    """``mlfolio tune-job``: submit, or run in the container."""
    if args.in_container:
        from mlfolio.tune import spot

        if args.params_file or args.run_dir:
            raise ConfigError("--in-container takes no parameter file or --run-dir")
        summary = spot.run_job(spot.JobPaths(Path(args.opt_ml)))
        echo(
            f"tune-job: study {summary['study_name']}: {summary['finished']} of "
            f"{summary['n_trials']} trials finished ({summary['resumed_with']} before this "
            f"attempt), best CV ROC AUC {summary['best_cv_roc_auc']}"
        )
        return
    if not args.params_file or not args.run_dir:
        raise ConfigError("tune-job: give PARAMS_FILE and --run-dir RUN (or --in-container)")
    from mlfolio import config

    cfg = config.load(args.params_file, config.parse_overrides(args.param))
    described = submit(cfg, Path(args.run_dir).resolve(), args.job_name)
    echo(
        f"submitted {described['TrainingJobName']} ({described['TrainingJobArn']}): "
        f"status {described['TrainingJobStatus']}, spot "
        f"{'on' if described.get('EnableManagedSpotTraining') else 'off'}, checkpoints "
        f"{described.get('CheckpointConfig', {}).get('S3Uri', 'none')}"
    )


def submit(cfg: Any, run_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Upload the job's inputs and create the training job; returns DescribeTrainingJob's
    answer. ``run_dir``: a run folder whose preprocess stage wrote data/train.parquet."""
    import tempfile

    from mlfolio import tune
    from mlfolio.deploy.aws_lambda import aws_call, aws_client, s3_upload
    from mlfolio.tune import spot

    _, _, bucket = spot.require_job_settings(cfg)  # before anything is read or sent
    train = tune.train_path(run_dir)
    if not train.is_file():
        raise ConfigError(f"--run-dir: no such file: {train} (the preprocess stage writes it)")
    study = tune.study_name(cfg, run_dir)
    name = name or spot.job_name(study)
    warm = _warm_start(cfg)
    spec = spot.job_spec(cfg, study, warm.get("params"), warm.get("note"))
    aws = cfg.deploy.aws
    sm = aws_client("sagemaker", aws.region, aws.endpoint_url)
    # Names are unique per account and region: refuse before writing into its inputs.
    found = aws_call(
        sm, "describe_training_job", name, absent=r"ValidationException", TrainingJobName=name
    )
    if found is not None:
        raise ConfigError(
            f"--job-name: training job {name} exists already ({found['TrainingJobStatus']}); "
            "give another name"
        )
    s3 = aws_client("s3", aws.region, aws.endpoint_url)
    prefix = f"mlfolio/{cfg.experiment}/tune-jobs"
    inputs = {}
    with tempfile.TemporaryDirectory(prefix="mlfolio-tune-job-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec, indent=2) + "\n")
        for channel, path in (("spec", spec_file), ("train", train)):
            key = f"{prefix}/{name}/input/{channel}/{path.name}"
            s3_upload(s3, path, bucket, key)
            inputs[channel] = f"s3://{bucket}/{prefix}/{name}/input/{channel}/"
    request = spot.training_job_request(cfg, name, study, inputs, f"s3://{bucket}/{prefix}/")
    aws_call(sm, "create_training_job", name, **request)
    return aws_call(sm, "describe_training_job", name, TrainingJobName=name)


def _warm_start(cfg: Any) -> dict[str, Any]:
    """The tune stage's first trial (``tuning.warm_start``), looked up here where the
    registry is reachable: {"params": ..., "note": ...}, or {} when off."""
    import mlflow

    from mlfolio.stages.training import warm_start

    mlflow.set_tracking_uri(cfg.tracking_uri())
    warm = warm_start(cfg)
    if "params" not in warm:
        return {}
    note = (
        f"champion {cfg.model_name} v{warm['version']}"
        if "version" in warm
        else f"baseline {warm.get('baseline')}"
    )
    return {"params": warm["params"], "note": note}
