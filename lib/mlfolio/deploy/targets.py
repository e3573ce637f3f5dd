"""The deploy stage's targets, by name: ``TARGETS[name](ctx, ref, alias_uri, out_dir)``.

Each target builds and ships the model version ``ref`` (served as ``alias_uri``, e.g.
``models:/churn-classifier@champion``), writes what it builds under ``out_dir``
(``<run>/deploy/<name>/``) and returns what it did, with a ``status`` saying how far it
went (:data:`mlfolio.products.DEPLOY_OUTCOMES`: ``deployed`` when nothing says less); it
raises DeployError when it cannot. A new target is its name in
:data:`mlfolio.config.TARGET_NAMES` and a function ``deploy_<name>`` here. boto3, sagemaker
and the Kubernetes validators are imported inside the target that needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfolio import products
from mlfolio.config.operations import TARGET_NAMES

if TYPE_CHECKING:
    from mlfolio.context import StageContext
    from mlfolio.registry import ModelRef


def deploy_local(ctx: StageContext, ref: ModelRef, alias_uri: str, out_dir: Path) -> dict[str, Any]:
    """Start ``mlfolio serve`` on the alias and check its answers on test rows against the
    pipeline's own scores; then stop it (``checked``), or leave it ``serving``."""
    from mlfolio import tracking, train
    from mlfolio.deploy.local import deploy_local as serve_and_check

    cfg, local = ctx.cfg, ctx.cfg.deploy.local
    test = ctx.read(products.SPLITS["test"]).head(local.sample_rows)
    rows = test[cfg.schema.features]
    expected = train.predict_scores(tracking.load_model(ref.uri), test, cfg.schema)
    return serve_and_check(
        alias_uri,
        cfg.tracking_uri(),
        rows,
        expected,
        host=local.host,
        port=local.port,
        log_path=ctx.path("logs/serve-local.log"),
        keep_serving=local.keep_serving,
    )


def deploy_kubernetes(
    ctx: StageContext, ref: ModelRef, alias_uri: str, out_dir: Path
) -> dict[str, Any]:
    """Render the Dockerfile and manifests into ``out_dir`` and validate them: ``written``,
    nothing is applied to a cluster."""
    from mlfolio.deploy import kubernetes

    k = ctx.cfg.deploy.kubernetes
    settings = kubernetes.KubernetesSettings.from_config(
        k,
        model_name=ref.name,
        model_version=ref.version,
        model_uri=alias_uri,
        tracking_uri=k.tracking_uri or ctx.cfg.tracking_uri(),
    )
    summary = kubernetes.render(out_dir, settings, monitoring=ctx.cfg.monitoring)
    summary["validated"] = kubernetes.validate_manifests(out_dir / "kubernetes.yaml")
    return {"status": "written", **summary}


def deploy_lambda(
    ctx: StageContext, ref: ModelRef, alias_uri: str, out_dir: Path
) -> dict[str, Any]:
    """Build the function package in ``out_dir`` and create or update the function."""
    from mlfolio.deploy import aws_lambda

    dc = ctx.cfg.deploy
    package = aws_lambda.build_package(ref.uri, out_dir)
    return aws_lambda.deploy_lambda(
        package,
        function_name=dc.lambda_.function_name or ref.name,
        role_arn=dc.aws.role_arn,
        model_version=ref.version,
        region=dc.aws.region,
        endpoint_url=dc.aws.endpoint_url,
        memory_mb=dc.lambda_.memory_mb,
        timeout_s=dc.lambda_.timeout_s,
    )


def deploy_sagemaker(
    ctx: StageContext, ref: ModelRef, alias_uri: str, out_dir: Path
) -> dict[str, Any]:
    """Build ``model.tar.gz`` in ``out_dir`` and create or update the endpoint; with
    ``serverless.memory_mb: auto``, size its memory from the model server's measured peak
    (recorded under ``serverless_sizing``)."""
    from mlfolio.deploy import sagemaker
    from mlfolio.deploy.aws_lambda import registry_info

    dc = ctx.cfg.deploy
    sm, aws = dc.sagemaker, dc.aws
    archive = sagemaker.build_model_archive(ref.uri, out_dir / "model.tar.gz")
    serverless, sizing = None, None
    if sm.serverless is not None:
        serverless = sm.serverless.model_dump()
        if serverless["memory_mb"] == "auto":
            sizing = _measure_serverless_memory(ctx, archive, sm.serverless.measure_rows)
            serverless["memory_mb"] = sizing["memory_mb"]
    result = sagemaker.deploy_sagemaker(
        archive,
        endpoint_name=sm.endpoint_name or ref.name,
        image_uri=sm.image_uri,
        role_arn=aws.role_arn,
        bucket=aws.bucket,
        model_version=ref.version,
        region=aws.region,
        endpoint_url=aws.endpoint_url,
        instance_type=sm.instance_type,
        instance_count=sm.instance_count,
        serverless=serverless,
        model_name=ref.name,
        threshold=registry_info(ref.uri).get("threshold"),
    )  # the container has no registry
    if sizing is not None:
        result["serverless_sizing"] = sizing
    return result


def _measure_serverless_memory(ctx: StageContext, archive: Path, rows: int) -> dict[str, Any]:
    """``memory_mb: auto``: `mlfolio serve` on the archive unpacked, as the container
    serves ``/opt/ml/model``, ``rows`` test rows sent in one request, its peak resident
    memory read, and the Serverless Inference size chosen."""
    import tarfile
    import tempfile

    from mlfolio.deploy import sagemaker
    from mlfolio.deploy.local import measure_serve_memory

    cfg = ctx.cfg
    test = ctx.read(products.SPLITS["test"]).head(rows)
    with tempfile.TemporaryDirectory(prefix="mlfolio-measure-") as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # what SageMaker does with ModelDataUrl
        measured = measure_serve_memory(
            tmp,
            cfg.tracking_uri(),
            test[cfg.schema.features],
            log_path=ctx.path("logs/serve-measure.log"),
        )
    sizing = sagemaker.serverless_memory_mb(measured["peak_rss_mb"])
    sizing.update(rows_sent=measured["rows_sent"], request_bytes=measured["request_bytes"])
    return sizing


Target = Callable[["StageContext", "ModelRef", str, Path], dict[str, Any]]

# A name without its function fails here, at import.
TARGETS: dict[str, Target] = {name: globals()[f"deploy_{name}"] for name in TARGET_NAMES}
