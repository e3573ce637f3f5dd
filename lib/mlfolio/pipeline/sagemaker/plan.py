"""The SageMaker pipeline as plain data: one step per stage, derived from the stage
declarations (:data:`mlfolio.graph.STAGES`) as the Kubeflow pipeline's tasks are.

Shape: ``start`` (MLflow parent run) → one Processing step per stage, each given the
products (S3 folders) of the stages whose products it ``reads`` and waiting for those it
comes ``after``; the stage that ``fans_out`` waits for ``tuning.n_workers`` parallel
worker steps on the shared Optuna study; the ``gated`` stages sit in the ``if`` branch of
a Condition step on the gate stage's verdict (a property file of its products); a
``finish`` step in each branch ends the parent run.

Every step runs :mod:`mlfolio.pipeline.sagemaker.entry` in the project image with the
validated parameters as arguments (passwords left out: :func:`scrub`), so the definition
holds everything a run needs but the secrets, which the steps read from AWS Secrets
Manager by name (``sagemaker.secrets``).

Caching: SageMaker reuses a step when its image, arguments, environment and inputs equal
those of a successful step within ``sagemaker.cache_days``. The arguments hold what the
local reuse hashes (:func:`mlfolio.pipeline.provenance.stage_inputs`): the notebook's and
the ``mlfolio`` source's hashes (checked against the image when the step runs), the
parameters, the tracking URI and, for a stage reading a data file in the image, the
file's hash; the image pins the packages; the inputs are the upstream steps' S3 folders,
which are new whenever an upstream step executed again. Coarser than the local reuse in
two ways: every parameter is in every step's arguments (a changed gate threshold also
re-runs tuning), and upstream products are compared by location, not content. Stages
with effects outside (``reusable=False``), a stage reading a data source outside the image
(S3, SQL) and one reading the champion (unless ``evaluation.champion_version`` pins it)
are never cached: SageMaker cannot see those change.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfolio.config import Config
from mlfolio.errors import ConfigError
from mlfolio.graph import STAGES, Stage, notebooks_dir
from mlfolio.pipeline.kfp import spec

log = logging.getLogger(__name__)

ENTRY = ("python", "-m", "mlfolio.pipeline.sagemaker.entry")
OUTPUT = "products"  # each step's one output channel: its folder of products
GATE_FILE = "gate"  # the property file of the gate stage's verdict
WORKER = "tune-worker"
ARG_MAX = 256  # CreateProcessingJob: ContainerArguments items (at most 100)
ARGS_MAX = 100
INPUTS_MAX = 10  # CreateProcessingJob: ProcessingInputs
DEFINITION_MAX = 1048576  # CreatePipeline: PipelineDefinition, characters
MAX_RUNTIME_S = 777600  # CreateProcessingJob: StoppingCondition.MaxRuntimeInSeconds
# The team services, as pipeline parameters (a start request may name others).
TRACKING = "TrackingUri"
TUNING = "TuningStorage"
S3_ROOT = "ArtifactsS3Uri"


@dataclass(frozen=True)
class Param:
    """An argument that is the value of a pipeline parameter."""

    name: str


@dataclass(frozen=True)
class Products:
    """An argument that is the S3 folder of another step's products."""

    step: str


Arg = str | Param | Products


@dataclass(frozen=True)
class StepPlan:
    """One Processing step: what it runs and how it is wired."""

    name: str
    command: tuple[Arg, ...]  # the entry's arguments
    inputs: tuple[str, ...] = ()  # steps whose products folders it receives
    depends_on: tuple[str, ...] = ()  # steps it follows without their products
    branch: str | None = None  # "if" / "else": inside the Condition step
    cache: bool = False
    retries: int = 0
    timeout_s: int | None = None
    instance_type: str = "ml.m5.xlarge"
    stage: str | None = None  # the stage it runs (None: start, finish, a worker)
    property_file: str | None = None  # a product holding the gate verdict


@dataclass(frozen=True)
class Plan:
    name: str
    role_arn: str
    image_uri: str
    region: str | None
    parameters: dict[str, str]  # pipeline parameter -> default value
    steps: tuple[StepPlan, ...]
    gate_step: str
    gate_path: str  # JSON path of the verdict in the gate step's property file
    environment: dict[str, str] = field(default_factory=dict)
    cache_days: int = 30
    scrubbed: tuple[str, ...] = ()  # parameter keys whose password was left out


# -- passwords ------------------------------------------------------------------------------
def scrub(params: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """``params`` with the password of every URL left out; the dotted keys it was in."""
    if isinstance(params, dict):
        out, keys = {}, []
        for key, value in params.items():
            out[key], found = scrub(value, f"{prefix}{key}.")
            keys += found
        return out, keys
    if isinstance(params, list):
        pairs = [scrub(v, f"{prefix}{i}.") for i, v in enumerate(params)]
        return [p[0] for p in pairs], [k for p in pairs for k in p[1]]
    if isinstance(params, str) and "://" in params:
        clean = without_password(params, prefix.rstrip("."))
        return clean, [prefix.rstrip(".")] if clean != params else []
    return params, []


def without_password(url: str, key: str) -> str:
    """``url`` with the password of its user left out (user, host and the rest kept);
    ConfigError when a password cannot be told from the host (an unencoded '/')."""
    scheme, _, rest = url.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    tail = rest[len(netloc) :]
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        return f"{scheme}://{userinfo.partition(':')[0]}@{host}{tail}"
    if "@" in tail and re.search(r":(?!\d*$)", netloc):
        raise ConfigError(
            f"{key}: the password in this URL cannot be told from the host: "
            "percent-encode '@', ':' and '/' in it (and give it by reference: "
            "sagemaker.secrets)"
        )
    return url


# -- the plan ---------------------------------------------------------------------------------
def pipeline_name(cfg: Config) -> str:
    return cfg.sagemaker.pipeline_name or spec.pipeline_name(cfg)


def s3_root(cfg: Config, source: str) -> str:
    if cfg.sagemaker.s3_uri:
        return cfg.sagemaker.s3_uri.rstrip("/")
    if not cfg.deploy.aws.bucket:
        raise ConfigError(
            f"{source}: sagemaker.s3_uri: the steps hand their products over in S3: "
            "give sagemaker.s3_uri (s3://bucket/prefix) or deploy.aws.bucket"
        )
    return f"s3://{cfg.deploy.aws.bucket}/{pipeline_name(cfg)}"


def _required(cfg: Config, source: str) -> tuple[str, str]:
    role = cfg.sagemaker.role_arn or cfg.deploy.aws.role_arn
    if not role:
        raise ConfigError(
            f"{source}: sagemaker.role_arn: the steps need an execution role "
            "(arn:aws:iam::<account>:role/<name>; or deploy.aws.role_arn)"
        )
    if not cfg.sagemaker.image_uri:
        raise ConfigError(
            f"{source}: sagemaker.image_uri: the steps run the project image "
            "(docker build -f Dockerfile, pushed to ECR: docs/aws.md)"
        )
    for name in cfg.sagemaker.instance_types:
        if name not in spec.tasks():
            raise ConfigError(
                f"{source}: sagemaker.instance_types.{name}: the pipeline has no such "
                f"step; expected one of {', '.join(spec.tasks())}"
            )
    return role, cfg.sagemaker.image_uri


def chunks(text: str, size: int = ARG_MAX) -> list[str]:
    """``text`` cut into arguments SageMaker accepts (each at most ``size`` characters)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _timeout(cfg: Config, stage: str, source: str) -> int | None:
    seconds = cfg.stages.of(stage).timeout_s
    if seconds is None:
        return None
    if seconds > MAX_RUNTIME_S:
        raise ConfigError(
            f"{source}: stages.{stage}.timeout_s: {seconds:g} s is over SageMaker's "
            f"longest processing job ({MAX_RUNTIME_S} s, 9 days)"
        )
    return max(1, math.ceil(seconds))


def _cacheable(stage: Stage, cfg: Config) -> bool:
    if not stage.reusable or cfg.sagemaker.cache_days == 0:
        return False
    if stage.reads_source and cfg.data.kind != "file":
        return False
    if stage.reads_champion and getattr(cfg.evaluation, "champion_version", None) is None:
        return False
    return True


def source_sha(cfg: Config) -> str:
    """The data file's hash, as ingest records it (the file travels in the image)."""
    from mlfolio.pipeline.provenance import source_hash

    return source_hash(cfg.data)


def build(cfg: Config, params: dict[str, Any], source: str) -> Plan:
    """The plan for ``cfg``; ``params`` are the parameters the steps receive
    (:func:`mlfolio.pipeline.kfp.spec.pipeline_params`)."""
    from mlfolio.pipeline.provenance import notebook_source_hash, package_source_hash

    role, image = _required(cfg, source)
    clean, scrubbed = scrub(params)
    for key in scrubbed:
        log.warning(
            "%s: %s: its password is left out of the pipeline definition; the steps read "
            "it by reference (sagemaker.secrets, e.g. PGPASSWORD: <secret name>)",
            source,
            key,
        )
    text = json.dumps(clean, separators=(",", ":"), sort_keys=True)
    common: list[Arg] = []
    for piece in chunks(text):
        common += ["--params", piece]
    common += ["--tracking-uri", Param(TRACKING), "--tuning-storage", Param(TUNING)]
    mlfolio_sha = package_source_hash()
    instance = cfg.sagemaker.instance_types.get
    default_type = cfg.sagemaker.instance_type

    steps: list[StepPlan] = [
        StepPlan("start", ("start", *common), instance_type=instance("start", default_type))
    ]
    fan_out = cfg.tuning.enabled and cfg.tuning.n_workers > 1
    gate_step, gate_path = "", ""
    for stage in STAGES:
        run = cfg.stages.of(stage.name)
        timeout = _timeout(cfg, stage.name, source)
        cache = _cacheable(stage, cfg)
        nb = notebooks_dir() / stage.notebook
        args: list[Arg] = [
            "stage",
            stage.name,
            *common,
            "--notebook-sha",
            notebook_source_hash(nb),
            "--mlfolio-sha",
            mlfolio_sha,
        ]
        if stage.reads_source and cfg.data.kind == "file":
            args += ["--source-sha", source_sha(cfg)]
        inputs = stage.upstream
        after = list(stage.after) + ([] if inputs else ["start"])
        if stage.fans_out:
            # the study is named after the products it tunes on: the workers and the stage
            # (and a later execution reusing those products) share it
            study = ("--study-of", Products(inputs[0]))
            args += [*study]
            if fan_out:
                args += ["--fanned-out"]
                for k in range(cfg.tuning.n_workers):
                    worker_args = ("tune-worker", str(k), *common, "--mlfolio-sha", mlfolio_sha)
                    steps.append(
                        StepPlan(
                            f"{WORKER}-{k}",
                            (*worker_args, *study),
                            inputs=inputs,
                            cache=cache,
                            retries=run.retries,
                            timeout_s=timeout,
                            instance_type=instance(spec.WORKERS, default_type),
                        )
                    )
                after += [f"{WORKER}-{k}" for k in range(cfg.tuning.n_workers)]
        prop = None
        if stage.decides_gate:
            from mlfolio import products

            (prop,) = (p for p in stage.writes if p == products.EVALUATE.path)
            gate_step, gate_path = stage.name, "gate.passed"
        steps.append(
            StepPlan(
                stage.name,
                tuple(args),
                inputs=inputs,
                depends_on=tuple(after),
                branch="if" if stage.gated else None,
                cache=cache,
                retries=run.retries,
                timeout_s=timeout,
                instance_type=instance(stage.name, default_type),
                stage=stage.name,
                property_file=prop,
            )
        )
    if not gate_step:
        raise ConfigError("the stage graph has no stage that decides the gate")
    last = [s.name for s in steps if s.branch == "if"][-1:]
    for branch, name, after in (("if", "finish", last), ("else", "finish-gate-failed", [])):
        steps.append(
            StepPlan(
                name,
                ("finish", *common),
                depends_on=tuple(after),
                branch=branch,
                instance_type=instance("finish", default_type),
            )
        )
    plan = Plan(
        name=pipeline_name(cfg),
        role_arn=role,
        image_uri=image,
        region=cfg.deploy.aws.region,
        parameters={
            TRACKING: clean["tracking"]["tracking_uri"] or "",
            TUNING: clean["tuning"].get("storage") or "",
            S3_ROOT: s3_root(cfg, source),
        },
        steps=tuple(steps),
        gate_step=gate_step,
        gate_path=gate_path,
        environment={f"MLFOLIO_SECRET_{k}": v for k, v in cfg.sagemaker.secrets.items()},
        cache_days=cfg.sagemaker.cache_days,
        scrubbed=tuple(scrubbed),
    )
    check_limits(plan)
    return plan


def check_limits(plan: Plan) -> None:
    """What CreateProcessingJob would refuse, refused here (names the step)."""
    for step in plan.steps:
        if len(step.command) > ARGS_MAX:
            raise ConfigError(
                f"step {step.name}: {len(step.command)} container arguments (SageMaker takes "
                f"{ARGS_MAX}): the parameters are too long"
            )
        for arg in step.command:
            if isinstance(arg, str) and len(arg) > ARG_MAX:
                raise ConfigError(f"step {step.name}: an argument over {ARG_MAX} characters")
        if len(step.inputs) > INPUTS_MAX:
            raise ConfigError(
                f"step {step.name}: reads the products of {len(step.inputs)} stages; "
                f"a SageMaker processing job takes {INPUTS_MAX} inputs"
            )
        if not re.fullmatch(r"[A-Za-z0-9\-_]{1,64}", step.name):
            raise ConfigError(f"step {step.name}: not a SageMaker step name")
    for name, value in plan.environment.items():
        if len(value) > ARG_MAX:
            raise ConfigError(f"sagemaker.secrets.{name[15:]}: over {ARG_MAX} characters")


def stage_notebook(name: str) -> Path:
    """The committed notebook of stage ``name`` (what its step runs)."""
    return notebooks_dir() / next(s.notebook for s in STAGES if s.name == name)
