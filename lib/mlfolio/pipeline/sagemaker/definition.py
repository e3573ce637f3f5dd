"""The plan (:mod:`.plan`) built with the SageMaker Python SDK v3 (``sagemaker-mlops``'s
``sagemaker.mlops.workflow``, ``sagemaker-core``'s processing and workflow primitives) and
written as the pipeline definition JSON that ``create_pipeline`` / ``update_pipeline``
take. Nothing calls AWS: the SDK session is given a region and a bucket, so it never
looks them up.

Retries: SageMaker retries a step on its own faults (``Step.SERVICE_FAULT``,
``Step.THROTTLING``) and on a job's capacity, internal and resource-limit errors, up to
``stages.<name>.retries`` times; a notebook that fails fails its step. Timeouts:
``stages.<name>.timeout_s`` is the job's ``MaxRuntimeInSeconds``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlfolio.config import Config
from mlfolio.errors import ConfigError
from mlfolio.pipeline.kfp import spec
from mlfolio.pipeline.sagemaker import plan as plan_mod
from mlfolio.pipeline.sagemaker.plan import Param, Plan, Products, StepPlan

INPUT_DIR = "/opt/ml/processing/input"
OUTPUT_DIR = "/opt/ml/processing/output/products"


@contextlib.contextmanager
def _region(region: str | None) -> Iterator[None]:
    """A default region while the SDK is imported (sagemaker 3.27 creates a boto3 client
    when ``sagemaker.mlops`` is imported; without a region that raises NoRegionError)."""
    had = "AWS_DEFAULT_REGION" in os.environ or "AWS_REGION" in os.environ
    if not had:
        os.environ["AWS_DEFAULT_REGION"] = region or "us-east-1"
    try:
        yield
    finally:
        if not had:
            os.environ.pop("AWS_DEFAULT_REGION", None)


def _sdk() -> Any:
    """The SDK's names this module uses (imported on first use: ~10 s)."""
    import types

    from sagemaker.core import processing, shapes
    from sagemaker.core.workflow import (
        conditions,
        execution_variables,
        functions,
        parameters,
        pipeline_context,
        properties,
    )
    from sagemaker.mlops.workflow import condition_step, pipeline, retry, steps

    return types.SimpleNamespace(
        Processor=processing.Processor,
        ProcessingInput=shapes.ProcessingInput,
        ProcessingOutput=shapes.ProcessingOutput,
        ProcessingS3Input=shapes.ProcessingS3Input,
        ProcessingS3Output=shapes.ProcessingS3Output,
        ConditionEquals=conditions.ConditionEquals,
        ExecutionVariables=execution_variables.ExecutionVariables,
        Join=functions.Join,
        JsonGet=functions.JsonGet,
        ParameterString=parameters.ParameterString,
        PipelineSession=pipeline_context.PipelineSession,
        PropertyFile=properties.PropertyFile,
        ConditionStep=condition_step.ConditionStep,
        Pipeline=pipeline.Pipeline,
        SageMakerJobExceptionTypeEnum=retry.SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy=retry.SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum=retry.StepExceptionTypeEnum,
        StepRetryPolicy=retry.StepRetryPolicy,
        CacheConfig=steps.CacheConfig,
        ProcessingStep=steps.ProcessingStep,
    )


class _Builder:
    def __init__(self, plan: Plan, sdk: Any, session: Any):
        self.plan, self.sdk, self.session = plan, sdk, session
        self.params = {
            name: sdk.ParameterString(name, default_value=value)
            for name, value in plan.parameters.items()
        }
        self.steps: dict[str, Any] = {}

    def products_uri(self, step: str) -> Any:
        return (
            self.steps[step]
            .properties.ProcessingOutputConfig.Outputs[plan_mod.OUTPUT]
            .S3Output.S3Uri
        )

    def arg(self, value: plan_mod.Arg) -> Any:
        if isinstance(value, Param):
            return self.params[value.name]
        if isinstance(value, Products):
            return self.products_uri(value.step)
        return value

    def retry_policies(self, retries: int) -> list[Any]:
        if retries <= 0:
            return []
        sdk = self.sdk
        return [
            sdk.StepRetryPolicy(
                exception_types=[
                    sdk.StepExceptionTypeEnum.SERVICE_FAULT,
                    sdk.StepExceptionTypeEnum.THROTTLING,
                ],
                max_attempts=retries,
                interval_seconds=10,
            ),
            sdk.SageMakerJobStepRetryPolicy(
                exception_types=[
                    sdk.SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                    sdk.SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                    sdk.SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT,
                ],
                max_attempts=retries,
                interval_seconds=60,
            ),
        ]

    def step(self, sp: StepPlan) -> Any:
        sdk, plan = self.sdk, self.plan
        processor = sdk.Processor(
            role=plan.role_arn,
            image_uri=plan.image_uri,
            instance_count=1,
            instance_type=sp.instance_type,
            entrypoint=list(plan_mod.ENTRY),
            max_runtime_in_seconds=sp.timeout_s,
            sagemaker_session=self.session,
            env=dict(plan.environment) or None,
        )
        # Under its execution's folder: a step that executed again writes to a new place,
        # so what reads its products misses the cache; one reused keeps the old place.
        destination = sdk.Join(
            on="/",
            values=[
                self.params[plan_mod.S3_ROOT],
                sdk.ExecutionVariables.PIPELINE_EXECUTION_ID,
                sp.name,
            ],
        )
        output = sdk.ProcessingOutput(
            output_name=plan_mod.OUTPUT,
            s3_output=sdk.ProcessingS3Output(
                s3_uri=destination, local_path=OUTPUT_DIR, s3_upload_mode="EndOfJob"
            ),
        )
        inputs = [
            sdk.ProcessingInput(
                input_name=name,
                s3_input=sdk.ProcessingS3Input(
                    s3_uri=self.products_uri(name),
                    local_path=f"{INPUT_DIR}/{name}",
                    s3_data_type="S3Prefix",
                    s3_input_mode="File",
                ),
            )
            for name in sp.inputs
        ]
        args = processor.run(
            inputs=inputs or None,
            outputs=[output],
            arguments=[self.arg(a) for a in sp.command],
        )
        files = None
        if sp.property_file:
            files = [
                sdk.PropertyFile(
                    name=plan_mod.GATE_FILE, output_name=plan_mod.OUTPUT, path=sp.property_file
                )
            ]
        cache = None
        if sp.cache:
            cache = sdk.CacheConfig(enable_caching=True, expire_after=f"P{plan.cache_days}D")
        step = sdk.ProcessingStep(
            name=sp.name,
            step_args=args,
            display_name=sp.stage or sp.name,
            property_files=files,
            cache_config=cache,
            depends_on=[self.steps[d] for d in sp.depends_on] or None,
            retry_policies=self.retry_policies(sp.retries) or None,
        )
        self.steps[sp.name] = step
        return step

    def pipeline(self) -> Any:
        sdk, plan = self.sdk, self.plan
        top, branches = [], {"if": [], "else": []}
        gate = None
        for sp in plan.steps:
            step = self.step(sp)
            (branches[sp.branch] if sp.branch else top).append(step)
            if sp.name == plan.gate_step:
                gate = step
        verdict = sdk.JsonGet(
            step_name=gate.name,
            property_file=gate.property_files[0],
            json_path=plan.gate_path,
        )
        condition = sdk.ConditionStep(
            name="gate-passed",
            display_name="gate passed?",
            conditions=[sdk.ConditionEquals(left=verdict, right=True)],
            if_steps=branches["if"],
            else_steps=branches["else"],
        )
        return sdk.Pipeline(
            name=plan.name,
            parameters=list(self.params.values()),
            steps=[*top, condition],
            sagemaker_session=self.session,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The SDK's notes on what it does under a PipelineSession (no job started, job names
    left to the execution) are not the user's concern."""
    import logging
    import warnings

    # sagemaker.config logs at INFO which SDK defaults files it did not find
    loggers = [logging.getLogger(name) for name in ("sagemaker", "sagemaker.config")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def definition(plan: Plan) -> dict[str, Any]:
    """The pipeline definition of ``plan`` (the JSON ``create_pipeline`` takes)."""
    with _region(plan.region), _quiet():
        import boto3

        sdk = _sdk()
        boto = boto3.Session(region_name=plan.region or os.environ["AWS_DEFAULT_REGION"])
        bucket = plan.parameters[plan_mod.S3_ROOT].removeprefix("s3://").split("/")[0]
        session = sdk.PipelineSession(boto_session=boto, default_bucket=bucket)
        return json.loads(_Builder(plan, sdk, session).pipeline().definition())


def compile_pipeline(
    params_file: str | Path, overrides: dict[str, Any] | None, output: str | Path
) -> tuple[Config, Plan, Path]:
    """Validate (as ``compile kfp`` does: the steps run on other machines), plan, build and
    write the definition; return the config, the plan and the file written."""
    cfg, text = spec.prepare(params_file, overrides, cluster=True)
    plan = plan_mod.build(cfg, json.loads(text), str(params_file))
    doc = definition(plan)
    # what `aws sagemaker create-pipeline --pipeline-definition file://...` sends, as is
    text = json.dumps(doc, indent=2) + "\n"
    if len(text) > plan_mod.DEFINITION_MAX:
        raise ConfigError(
            f"{params_file}: the pipeline definition is {len(text)} characters; "
            f"CreatePipeline takes {plan_mod.DEFINITION_MAX} (each step carries the "
            f"parameters: fewer tuning.n_workers, {cfg.tuning.n_workers} now)"
        )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return cfg, plan, out
