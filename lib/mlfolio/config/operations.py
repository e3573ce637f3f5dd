"""Parameter sections of operations: deploy targets, monitoring and its policies, Kubeflow.

Re-exported by :mod:`mlfolio.config`, which assembles them into :class:`~mlfolio.config.Config`.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlfolio.config.base import _Section

# The deploy targets, named here once: deploy.targets is checked against them, and
# deploy.TARGETS maps each to its function deploy_<name> (lib/mlfolio/deploy/targets.py).
TargetName = Literal["local", "kubernetes", "lambda", "sagemaker"]
TARGET_NAMES: tuple[str, ...] = get_args(TargetName)


class LocalTargetConfig(_Section):
    """Target local: serve the version on this machine and check its answers."""

    host: str = Field("127.0.0.1", description="address the checked server listens on")
    port: int = Field(0, ge=0, le=65535, description="0 = a free port")
    sample_rows: int = Field(20, ge=1, description="test rows sent to check the answers")
    keep_serving: bool = Field(
        False,
        description="leave the checked server running (its URL and pid are recorded); "
        "false: it is stopped after the check, and nothing serves",
    )


class KubernetesTargetConfig(_Section):
    """Target kubernetes: manifests written (and validated) for the serving image."""

    image: str = Field("mlfolio-serve:latest", description="the serving image of the pods")
    namespace: str = Field("default", description="namespace of the manifests")
    replicas: int = Field(2, ge=1, description="pods of the Deployment without autoscaling")
    min_replicas: int = Field(2, ge=1, description="the autoscaler's lower bound")
    max_replicas: int = Field(6, ge=1, description="the autoscaler's upper bound")
    tracking_uri: str | None = Field(None, description="what pods use; None = the run's")


class AwsConfig(_Section):
    """Left empty, boto3's standard configuration (env, profile, instance role) applies."""

    region: str | None = Field(None, description="AWS region; None = boto3's")
    endpoint_url: str | None = Field(None, description="e.g. a moto server or LocalStack")
    role_arn: str | None = Field(
        None, description="IAM role the function or endpoint runs as (lambda, sagemaker)"
    )
    bucket: str | None = Field(None, description="S3 bucket for model.tar.gz (sagemaker)")


class LambdaTargetConfig(_Section):
    """Target lambda: an AWS Lambda function that scores with the version."""

    function_name: str | None = Field(None, description="None = '<model name>'")
    memory_mb: int = Field(1024, ge=128, le=10240, description="the function's memory")
    timeout_s: int = Field(30, ge=1, le=900, description="the function's timeout, seconds")


# SageMaker Serverless Inference's memory sizes (ServerlessConfig.MemorySizeInMB), MB.
SERVERLESS_MEMORY_MB: tuple[int, ...] = (1024, 2048, 3072, 4096, 5120, 6144)


class SagemakerServerlessConfig(_Section):
    """Serverless Inference: the endpoint's variant has a ``ServerlessConfig`` (memory and
    concurrency) instead of instances."""

    memory_mb: int | Literal["auto"] = Field(
        "auto",
        description="memory of each serverless container: one of 1024, 2048, 3072, 4096, "
        "5120, 6144, or auto (the peak resident memory of `mlfolio serve` measured on the "
        "model, plus headroom, rounded up to the next size)",
    )
    max_concurrency: int = Field(
        ge=1, le=200, description="concurrent invocations the endpoint serves at most"
    )
    provisioned_concurrency: int | None = Field(
        None,
        ge=1,
        le=200,
        description="containers kept warm (no cold start, billed while idle); None = none, "
        "at most max_concurrency",
    )
    measure_rows: int = Field(
        1000,
        ge=1,
        description="auto: test rows sent in one request while the peak memory is measured",
    )

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _a_serverless_size(cls, value: object) -> object:
        if value == "auto":
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value not in SERVERLESS_MEMORY_MB
        ):
            sizes = ", ".join(map(str, SERVERLESS_MEMORY_MB))
            raise ValueError(f"expected auto or one of {sizes} (MB)")
        return value

    @model_validator(mode="after")
    def _provisioned_within_max(self) -> SagemakerServerlessConfig:
        p = self.provisioned_concurrency
        if p is not None and p > self.max_concurrency:
            raise ValueError(
                f"provisioned_concurrency {p} is above max_concurrency "
                f"{self.max_concurrency}; expected at most max_concurrency"
            )
        return self


class SagemakerTargetConfig(_Section):
    """Target sagemaker: a SageMaker endpoint serving the version with mlfolio's image."""

    endpoint_name: str | None = Field(None, description="None = '<model name>'")
    image_uri: str | None = Field(None, description="the serving image (mlfolio serve)")
    instance_type: str = Field(
        "ml.m5.large", description="the endpoint's instance type (not with serverless)"
    )
    instance_count: int = Field(
        1, ge=1, description="instances behind the endpoint (not with serverless)"
    )
    serverless: SagemakerServerlessConfig | None = Field(
        None,
        description="Serverless Inference instead of instances; None = an instance endpoint",
    )


class DeployConfig(_Section):
    """Where the deploy stage puts the model version behind ``alias``."""

    targets: list[TargetName] = Field(
        default_factory=lambda: ["local", "kubernetes"], description="where the version goes"
    )
    alias: str = Field("champion", description="the registry alias whose version is deployed")
    local: LocalTargetConfig = Field(default_factory=LocalTargetConfig)
    kubernetes: KubernetesTargetConfig = Field(default_factory=KubernetesTargetConfig)
    aws: AwsConfig = Field(default_factory=AwsConfig)
    lambda_: LambdaTargetConfig = Field(default_factory=LambdaTargetConfig, alias="lambda")
    sagemaker: SagemakerTargetConfig = Field(default_factory=SagemakerTargetConfig)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _aws_settings_present(self) -> DeployConfig:
        if {"lambda", "sagemaker"} & set(self.targets) and not self.aws.role_arn:
            raise ValueError("targets lambda/sagemaker need aws.role_arn (an IAM role ARN)")
        if "sagemaker" in self.targets:
            if not self.aws.bucket:
                raise ValueError("target sagemaker needs aws.bucket (for model.tar.gz)")
            if not self.sagemaker.image_uri:
                raise ValueError(
                    "target sagemaker needs sagemaker.image_uri (the serving "
                    "image built from the kubernetes target's Dockerfile)"
                )
        return self


class RetrainPolicyConfig(_Section):
    """When monitoring fires retraining (any trigger, once the guards allow it)."""

    min_drift_share: float | None = Field(
        0.3, gt=0, le=1, description="share of drifted columns that fires"
    )
    on_dataset_drift: bool = Field(True, description="dataset drift (drift_share) fires")
    max_roc_auc_drop: float | None = Field(
        0.03, gt=0, le=1, description="quality drop that fires (with labels)"
    )
    estimated_roc_auc_drop: float | None = Field(
        None,
        gt=0,
        le=1,
        description="drop of the label-free estimate (monitoring.estimate) below the "
        "reference ROC AUC that fires, before labels exist; None = off",
    )
    min_rows: int = Field(500, ge=1, description="fewer current rows: no decision")
    cooldown_hours: float = Field(24.0, ge=0, description="since the last retraining")


class ABConfig(_Section):
    """How the A/B report judges champion against challenger on logged outcomes."""

    min_labelled: int = Field(200, ge=10, description="labelled rows needed in each variant")
    min_improvement: float = Field(0.0, ge=0, le=1, description="ROC AUC gain to promote")
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="of the bootstrap interval of the gain"
    )
    bootstrap_samples: int = Field(1000, ge=100, description="resamples of the paired bootstrap")
    act: bool = Field(False, description="move the registry aliases as recommended")
    method: Literal["sequential", "delong"] = Field(
        "sequential",
        description="what decides: the always-valid mixture SPRT (monitoring.ab.metric) "
        "(may be read after every run) or DeLong's fixed-horizon ROC AUC test (valid "
        "read once)",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="false positive rate of the sequential test, however often read",
    )
    metric: Literal["roc_auc", "log_loss", "brier"] = Field(
        "roc_auc",
        description="what the sequential test compares: ROC AUC (DeLong's variance), or "
        "the mean per-row log loss or Brier score (calibration counts too)",
    )
    mixture_rows: int = Field(
        1000,
        ge=10,
        description="labelled rows (per arm, or paired) where the sequential test is "
        "tuned to be most sensitive",
    )


class AlertsConfig(_Section):
    """Thresholds of the Prometheus alert rules (``mlfolio.monitor.alerts``); the drift and
    quality ones default to the retraining policy's, which mean the same."""

    job: str = Field(
        "mlfolio", pattern=r"^[A-Za-z0-9_.:-]+$", description="Prometheus job of the servers"
    )
    pending: str = Field("5m", pattern=r"^[0-9]+[smhd]$", description="'for:' of the alerts")
    rate_window: str = Field("5m", pattern=r"^[0-9]+[smhd]$", description="rate() window")
    error_ratio: float = Field(0.05, gt=0, le=1, description="5xx share of requests (not 503)")
    latency_p99_seconds: float = Field(0.5, gt=0, description="p99 of scoring routes")
    overload_ratio: float = Field(0.01, gt=0, le=1, description="503 share of requests")
    score_mean_shift: float = Field(
        0.1, gt=0, lt=1, description="mean score now vs score_offset ago"
    )
    score_window: str = Field(
        "1h", pattern=r"^[0-9]+[smhd]$", description="window of the mean score compared"
    )
    score_offset: str = Field(
        "1d", pattern=r"^[0-9]+[smhd]$", description="how long ago the window it is compared with"
    )
    drift_share: float | None = Field(
        None, gt=0, le=1, description="None: monitoring.retrain.min_drift_share"
    )
    roc_auc_drop: float | None = Field(
        None, gt=0, le=1, description="None: monitoring.retrain.max_roc_auc_drop"
    )
    monitor_stale_hours: float = Field(48.0, gt=0, description="no monitor run for this long")
    estimated_roc_auc_drop: float | None = Field(
        None,
        gt=0,
        le=1,
        description="None: monitoring.retrain.estimated_roc_auc_drop, else its roc_auc_drop",
    )


class EstimateConfig(_Section):
    """The champion's performance estimated without labels (``mlfolio.estimate``, CBPE):
    its scores and the calibration shipped with its version give the expected metrics."""

    enabled: bool = Field(True, description="estimate ROC AUC, PR AUC, F1... on current rows")
    draws: int = Field(
        1000, ge=100, le=100_000, description="Monte Carlo label draws behind the intervals"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of the estimate's intervals")


class MonitoringConfig(_Section):
    """The monitor run: where current data comes from and what fires retraining."""

    prediction_log: str | None = Field(
        None, description="the model server's --prediction-log folder (current data)"
    )
    current: str | None = Field(
        None, description="CSV/Parquet of current rows; wins over the prediction log"
    )
    labels: str | None = Field(
        None,
        description="CSV/Parquet of ground truth: an id column "
        "(request_id or the schema's id) + target",
    )
    window_hours: float | None = Field(
        24.0, gt=0, description="prediction log window; None = all of it"
    )
    drift_share: float = Field(0.5, gt=0, le=1, description="dataset drift at this share")
    report_sample_rows: int | None = Field(
        5000, ge=100, description="rows per frame in the Evidently HTML"
    )
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    retrain: RetrainPolicyConfig = Field(default_factory=RetrainPolicyConfig)
    ab: ABConfig = Field(default_factory=ABConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([mkMGTPE]|[KMGTPE]i)?$")


class KfpResources(_Section):
    """What one pipeline task's pod requests (Kubernetes quantities, e.g. "500m", "4Gi")."""

    cpu: str | None = Field(None, description="CPU request; None = the cluster's default")
    memory: str | None = Field(None, description="memory request; None = the cluster's default")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None and not _QUANTITY.match(str(value)):
            raise ValueError("expected a Kubernetes quantity such as 2, 500m or 4Gi")
        return value


class KfpConfig(_Section):
    """``mlfolio compile kfp`` and ``--engine kfp``: the image, the artifact root, the
    resource requests per task."""

    image: str = Field("mlfolio:latest", description="image of every task (the Dockerfile)")
    pipeline_root: str | None = Field(
        None, description="where task artifacts go, e.g. s3://bucket/kfp; None = the cluster's"
    )
    # The task names are the pipeline's (mlfolio.pipeline.kfp.spec.tasks, from the stage
    # graph this floor cannot import): compiling refuses one that is no task, naming it.
    resources: dict[str, KfpResources] = Field(
        default_factory=dict,
        description="per task: a stage's name, or tune_worker for the tuning workers "
        "(checked when the pipeline is compiled)",
    )


class SagemakerConfig(_Section):
    """``mlfolio compile sagemaker`` and SageMaker training jobs (tune/train on managed spot
    capacity): the image, role and instances the steps run on. Region, endpoint and bucket
    are ``deploy.aws``'s."""

    pipeline_name: str | None = Field(
        None, description="the SageMaker pipeline's name; None = 'mlfolio-<experiment name>'"
    )
    role_arn: str | None = Field(
        None, description="execution role of the steps and jobs; None = deploy.aws.role_arn"
    )
    image_uri: str | None = Field(
        None, description="the project image in ECR (the Dockerfile) every step runs"
    )
    instance_type: str = Field("ml.m5.xlarge", description="instance type of every step")
    instance_types: dict[str, str] = Field(
        default_factory=dict, description="per stage: an instance type other than instance_type"
    )
    spot: bool = Field(False, description="training jobs on managed spot capacity")
    max_wait_s: int = Field(
        7200,
        ge=60,
        le=432000,
        description="spot: longest wait plus run, seconds (at least the stage's timeout_s)",
    )
    checkpoint_s3_uri: str | None = Field(
        None, description="spot: where a job's checkpoints (the Optuna study) survive a restart"
    )
    s3_uri: str | None = Field(
        None,
        description="S3 prefix the pipeline's steps hand their products over in (a pipeline "
        "parameter); None = s3://<deploy.aws.bucket>/<pipeline name>",
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="environment variable -> AWS Secrets Manager secret (name or ARN) a step "
        "reads it from, e.g. {PGPASSWORD: mlfolio/optuna}: passwords are never written into "
        "the pipeline definition",
    )
    cache_days: int = Field(
        30,
        ge=0,
        le=3650,
        description="steps of reusable stages are reused (SageMaker step caching) from an "
        "earlier execution with the same arguments and inputs this many days; 0 = never",
    )

    @field_validator("secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, secret in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"secrets: {name!r} is not an environment variable name")
            if not secret:
                raise ValueError(f"secrets.{name}: give the secret's name or ARN")
        return value

    @model_validator(mode="after")
    def _spot_checkpoints(self) -> SagemakerConfig:
        uri = self.checkpoint_s3_uri
        if uri is not None and not re.fullmatch(
            r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?", uri
        ):
            raise ValueError(f"checkpoint_s3_uri must be s3://bucket[/prefix] (got {uri!r})")
        if self.spot and uri is None:
            raise ValueError(
                "spot: true needs checkpoint_s3_uri (s3://bucket/prefix): a job restarted "
                "after a spot interruption resumes its study from there"
            )
        return self

    def check_run_bound(self, stage: str, timeout_s: float | None) -> None:
        """Refuse ``max_wait_s`` below the stage's run bound (``stages.<stage>.timeout_s``,
        SageMaker's MaxRuntimeInSeconds): SageMaker counts the run inside the wait."""
        if self.spot and timeout_s is not None and self.max_wait_s < timeout_s:
            raise ValueError(
                f"sagemaker.max_wait_s ({self.max_wait_s}) must be at least "
                f"stages.{stage}.timeout_s ({timeout_s:g}): SageMaker counts the run "
                "inside the wait (raise max_wait_s or lower the timeout)"
            )


class StageRunConfig(_Section):
    """How one stage is run by every engine (local runner, Kubeflow, SageMaker)."""

    retries: int = Field(
        0, ge=0, le=10, description="attempts after a failed one; a retry never re-registers"
    )
    timeout_s: float | None = Field(
        None, gt=0, description="longest run of one attempt, seconds; None = no limit"
    )


class TuneRunConfig(StageRunConfig):
    """The tune stage: time-bounded by default (a stuck worker cannot hold a run forever)."""

    timeout_s: float | None = Field(
        6 * 3600.0, gt=0, description="longest run of one attempt, seconds; None = no limit"
    )


class DeployRunConfig(StageRunConfig):
    """The deploy stage: retried by default (cloud APIs fail transiently)."""

    retries: int = Field(
        2, ge=0, le=10, description="attempts after a failed one; a retry never re-registers"
    )


class StagesConfig(_Section):
    """``stages:`` retries and timeouts per stage (one field per stage of mlfolio.graph; a
    test checks they match), honoured by the local runner and mapped to Kubeflow and
    SageMaker."""

    ingest: StageRunConfig = Field(default_factory=StageRunConfig)
    preprocess: StageRunConfig = Field(default_factory=StageRunConfig)
    train: StageRunConfig = Field(default_factory=StageRunConfig)
    tune: TuneRunConfig = Field(default_factory=TuneRunConfig)
    evaluate: StageRunConfig = Field(default_factory=StageRunConfig)
    # 'register' is a method of every pydantic model's metaclass: the field is register_
    register_: StageRunConfig = Field(default_factory=StageRunConfig, alias="register")
    deploy: DeployRunConfig = Field(default_factory=DeployRunConfig)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def of(self, stage: str) -> StageRunConfig:
        """The settings of ``stage`` (a name of mlfolio.graph.STAGES)."""
        for name, field in type(self).model_fields.items():
            if (field.alias or name) == stage:
                return getattr(self, name)
        raise KeyError(stage)
