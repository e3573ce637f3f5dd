"""The sagemaker target: a ``model.tar.gz`` for the SageMaker contract, and its rollout.

SageMaker unpacks ``ModelDataUrl`` into ``/opt/ml/model`` and starts the image with
``serve`` (``docker run IMAGE serve``), with the model's ``Environment``; the container
answers ``GET /ping`` and ``POST /invocations`` on port 8080. The archive therefore holds the
MLflow model directory at its root (``/opt/ml/model/MLmodel``), and ``image_uri`` is the
serving image of the kubernetes target (mlfolio installed: the pickled pipeline imports
``mlfolio.features``). Its ENTRYPOINT runs ``mlfolio serve --model "$MODEL_URI" --host
0.0.0.0 --port "$PORT" "$@"``, so :func:`container_environment` sets ``MODEL_URI`` to the
model directory and ``PORT`` to 8080, plus what the registry would tell a server (model
name, version, threshold), and ``mlfolio serve`` takes SageMaker's trailing ``serve``.

:func:`deploy_sagemaker` uploads the archive (key ``<endpoint>/model-v<version>-<time>/``),
creates a model and a new endpoint configuration named after the version, then creates the
endpoint or updates it to the new configuration. An update is blue/green: SageMaker brings
up the new fleet, shifts traffic, then retires the old one, and rolls back by itself if the
new fleet fails; the old configuration and model are left in place (the result names them),
so ``update_endpoint(EndpointName=..., EndpointConfigName=<previous>)`` is a rollback.

The variant runs on instances or, with ``serverless``, on Serverless Inference (a
``ServerlessConfig``: memory in SageMaker's 1 GB steps, concurrency), checked here before
anything is created. :func:`serverless_memory_mb` turns a measured peak into a size.
SageMaker updates a serverless endpoint to instances but not the reverse, so
:func:`deploy_sagemaker` refuses that switch before touching the endpoint.

Plain boto3, not the sagemaker SDK: sagemaker 3.x moved everything used here into
``sagemaker.core.resources`` (4-7 s to import, a region needed at import time, and its
models reject the empty ``VpcConfig``/``DataCaptureConfig`` moto returns), while the whole
rollout is five boto3 calls whose API has been stable for years.
"""

from __future__ import annotations

import gzip
import logging
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlfolio.config.operations import SERVERLESS_MEMORY_MB
from mlfolio.deploy import DeployError
from mlfolio.deploy.aws_lambda import (
    aws_call,
    aws_client,
    fetch_model_dir,
    s3_upload,
)

log = logging.getLogger(__name__)

VARIANT = "AllTraffic"
MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks ModelDataUrl
PORT = 8080  # where SageMaker sends /ping and /invocations
DONE = {"InService", "Failed", "OutOfService", "UpdateRollbackFailed"}
_NAME_MAX = 63  # SageMaker names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
# memory_mb: auto adds this share to the measured peak before rounding up to a size: the
# measurement is one request of measure_rows rows on this machine, while a serverless
# container may get payloads up to 4 MB and lives for many requests (allocator growth).
SERVERLESS_HEADROOM = 0.25


def build_model_archive(model_uri_or_dir: str | Path, out_path: str | Path) -> Path:
    """Write ``model.tar.gz`` with the MLflow model directory's files at the archive root.

    ``model_uri_or_dir`` is a local MLflow model directory or a URI MLflow can download
    (``models:/name/3``, ``models:/name@champion``, ``runs:/<id>/model``). The archive is
    reproducible: sorted members, fixed times and owners.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlfolio-sagemaker-") as tmp:
        model_dir = fetch_model_dir(model_uri_or_dir, Path(tmp) / "model")

        def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if info.isdir() else 0o644
            return info

        with (
            open(out, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w") as tar,
        ):
            for path in sorted(model_dir.rglob("*")):
                if path.is_file():
                    tar.add(
                        path,
                        arcname=path.relative_to(model_dir).as_posix(),
                        recursive=False,
                        filter=clean,
                    )
    log.info("sagemaker archive %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def container_environment(
    model_version: str | int, model_name: str | None = None, threshold: float | None = None
) -> dict[str, str]:
    """The SageMaker model's ``Environment``: what the serving image needs to serve the
    unpacked archive (``MODEL_URI``, ``PORT``) and the registry facts it cannot look up
    there (``MLFOLIO_MODEL_VERSION``, ``MLFOLIO_MODEL_NAME``, ``MLFOLIO_THRESHOLD``)."""
    env = {"MODEL_URI": MODEL_DIR, "PORT": str(PORT), "MLFOLIO_MODEL_VERSION": str(model_version)}
    if model_name:
        env["MLFOLIO_MODEL_NAME"] = model_name
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise DeployError(f"sagemaker threshold: expected a number in [0, 1], got {threshold}")
        env["MLFOLIO_THRESHOLD"] = repr(float(threshold))
    return env


def resource_name(endpoint_name: str, model_version: str, stamp: str) -> str:
    """``<endpoint>-v<version>-<time>``, fitted to SageMaker's naming rule (63 characters,
    letters, digits and hyphens); the time keeps re-deploys of one version apart."""
    suffix = re.sub(r"[^A-Za-z0-9]+", "-", f"v{model_version}-{stamp}").strip("-")
    base = re.sub(r"[^A-Za-z0-9]+", "-", endpoint_name).strip("-")
    return f"{base[: _NAME_MAX - len(suffix) - 1].rstrip('-')}-{suffix}"


def serverless_memory_mb(
    peak_rss_mb: float, headroom: float = SERVERLESS_HEADROOM
) -> dict[str, Any]:
    """The Serverless Inference memory size for a server whose measured peak resident
    memory is ``peak_rss_mb``: peak plus ``headroom``, rounded up to SageMaker's next size
    (1024 .. 6144 MB in 1 GB steps). Returns what ``deploy.json`` records (measured, needed
    and chosen MB, and why); DeployError when the need exceeds 6144 MB."""
    need = float(peak_rss_mb) * (1 + headroom)
    largest = SERVERLESS_MEMORY_MB[-1]
    if need > largest:
        raise DeployError(
            f"sagemaker serverless: memory_mb auto measured a peak of {peak_rss_mb:.0f} MB; "
            f"with {headroom:.0%} headroom it needs {need:.0f} MB, above Serverless "
            f"Inference's largest size ({largest} MB): serve it from instances (remove "
            "deploy.sagemaker.serverless) or make the model smaller"
        )
    chosen = next(size for size in SERVERLESS_MEMORY_MB if need <= size)
    return {
        "measured_peak_rss_mb": round(float(peak_rss_mb), 1),
        "headroom": headroom,
        "needed_mb": round(need, 1),
        "memory_mb": chosen,
        "reason": (
            f"peak resident memory of `mlfolio serve` {peak_rss_mb:.0f} MB + {headroom:.0%} "
            f"headroom = {need:.0f} MB, rounded up to SageMaker's next size: {chosen} MB"
        ),
    }


def serverless_config(serverless: Mapping[str, Any]) -> dict[str, int]:
    """SageMaker's ``ServerlessConfig`` from ``memory_mb``, ``max_concurrency`` and
    (optional) ``provisioned_concurrency``, checked here as SageMaker would check them (a
    DeployError naming the key), so nothing is created with a size SageMaker refuses."""
    where = "sagemaker serverless"
    memory = serverless.get("memory_mb")
    if isinstance(memory, bool) or memory not in SERVERLESS_MEMORY_MB:
        sizes = ", ".join(map(str, SERVERLESS_MEMORY_MB))
        raise DeployError(f"{where}: memory_mb {memory!r}: expected one of {sizes} (MB)")
    most = serverless.get("max_concurrency")
    if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= 200:
        raise DeployError(f"{where}: max_concurrency {most!r}: expected an integer in 1..200")
    config = {"MemorySizeInMB": memory, "MaxConcurrency": most}
    provisioned = serverless.get("provisioned_concurrency")
    if provisioned is not None:
        if isinstance(provisioned, bool) or not isinstance(provisioned, int):
            raise DeployError(
                f"{where}: provisioned_concurrency {provisioned!r}: expected an integer"
            )
        if not 1 <= provisioned <= most:
            raise DeployError(
                f"{where}: provisioned_concurrency {provisioned}: expected 1..max_concurrency "
                f"({most})"
            )
        config["ProvisionedConcurrency"] = provisioned
    return config


def production_variant(
    model_name: str,
    instance_type: str,
    instance_count: int,
    serverless: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The endpoint configuration's one variant: instances, or with ``serverless`` a
    ``ServerlessConfig`` (and no instance type or count)."""
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name}
    if serverless is not None:
        variant["ServerlessConfig"] = serverless_config(serverless)
    else:
        variant.update(InstanceType=instance_type, InitialInstanceCount=instance_count)
    variant["InitialVariantWeight"] = 1.0
    return variant


def variant_summary(variant: Mapping[str, Any]) -> dict[str, Any]:
    """What a configuration's variant runs on, for the records: ``serverless`` with its
    memory and concurrency, or ``instances`` with their type and count."""
    if "ServerlessConfig" in variant:
        sc = variant["ServerlessConfig"]
        return {
            "kind": "serverless",
            "memory_mb": sc.get("MemorySizeInMB"),
            "max_concurrency": sc.get("MaxConcurrency"),
            "provisioned_concurrency": sc.get("ProvisionedConcurrency"),
        }
    return {
        "kind": "instances",
        "instance_type": variant.get("InstanceType"),
        "instance_count": variant.get("InitialInstanceCount"),
    }


def wait_for_endpoint(
    sm: Any, endpoint_name: str, config_name: str, *, timeout_s: float, poll_s: float
) -> dict[str, Any]:
    """Poll until the endpoint settles; it must be InService on ``config_name``."""
    resource = f"endpoint {endpoint_name!r}"
    deadline = time.monotonic() + timeout_s
    while True:
        desc = aws_call(sm, "describe_endpoint", resource, EndpointName=endpoint_name)
        status = desc.get("EndpointStatus")
        if status in DONE:
            break
        if time.monotonic() > deadline:
            raise DeployError(
                f"sagemaker {resource} still {status} after {timeout_s:.0f} s "
                f"(rolling out {config_name}); it may yet finish: check "
                "describe_endpoint"
            )
        time.sleep(poll_s)
    reason = desc.get("FailureReason") or "no reason given"
    if status != "InService":
        raise DeployError(f"sagemaker {resource} is {status} rolling out {config_name}: {reason}")
    if desc.get("EndpointConfigName") != config_name:
        raise DeployError(
            f"sagemaker {resource} rolled back to "
            f"{desc.get('EndpointConfigName')} instead of {config_name}: "
            f"{reason}"
        )
    return desc


def _current_variant(sm: Any, desc: Mapping[str, Any]) -> dict[str, Any]:
    """What an existing endpoint serves from: its configuration's variant, or (that
    configuration deleted) the variants the endpoint describes."""
    name = desc.get("EndpointConfigName")
    config = aws_call(
        sm,
        "describe_endpoint_config",
        f"endpoint config {name!r}",
        EndpointConfigName=name,
        absent=r"ValidationException: Could not find endpoint config",
    )
    if config and config.get("ProductionVariants"):
        return variant_summary(config["ProductionVariants"][0])
    variants = desc.get("ProductionVariants") or [{}]
    if "CurrentServerlessConfig" in variants[0]:
        return variant_summary({"ServerlessConfig": variants[0]["CurrentServerlessConfig"]})
    return {"kind": "instances", "instance_type": None, "instance_count": None}


def _rollback(endpoint_name: str, previous: str, was: str, now: str) -> dict[str, Any]:
    """How to put the endpoint back on the configuration it served before."""
    if was == "serverless" and now == "instances":
        return {
            "endpoint_config_name": previous,
            "possible": False,
            "reason": "SageMaker does not update an instance endpoint to Serverless "
            "Inference: going back to the serverless configuration needs the endpoint "
            "deleted and created again on it",
        }
    return {
        "endpoint_config_name": previous,
        "possible": True,
        "command": f"aws sagemaker update-endpoint --endpoint-name {endpoint_name} "
        f"--endpoint-config-name {previous}",
    }


def deploy_sagemaker(
    archive: str | Path,
    *,
    endpoint_name: str,
    image_uri: str,
    role_arn: str,
    bucket: str,
    model_version: str | int,
    region: str | None = None,
    endpoint_url: str | None = None,
    instance_type: str = "ml.m5.large",
    instance_count: int = 1,
    serverless: Mapping[str, Any] | None = None,
    wait_timeout_s: float = 3600,
    poll_s: float = 15,
    model_name: str | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Upload ``archive`` to ``bucket``, create a model and an endpoint configuration for
    ``model_version``, create or update ``endpoint_name`` to it and wait until it serves.

    The configuration's variant runs on ``instance_count`` instances of ``instance_type``,
    or with ``serverless`` (``memory_mb``, ``max_concurrency``, optional
    ``provisioned_concurrency``; checked before anything is created) on Serverless
    Inference. A serverless endpoint can be updated to instances (blue/green, like any
    update); an instance endpoint cannot be updated to serverless (SageMaker refuses it),
    so that is refused here first, the endpoint untouched.

    Returns the endpoint, its new configuration and what its variant runs on, the model,
    the archive's S3 URI, and the configuration it replaced with how to roll back to it.
    Raises DeployError naming the AWS call and resource; until the update succeeds, the
    endpoint keeps serving its previous configuration. ``model_name`` and ``threshold``
    (the version's ``mlfolio.threshold`` tag) go into the container's environment
    (:func:`container_environment`): without a threshold the endpoint labels at 0.5.
    """
    path = Path(archive)
    environment = container_environment(model_version, model_name, threshold)
    if not path.is_file():
        raise DeployError(
            f"sagemaker archive {path} not found (expected the file written by build_model_archive)"
        )
    model_version = str(model_version)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = resource_name(endpoint_name, model_version, stamp)
    variant = production_variant(name, instance_type, instance_count, serverless)
    kind = variant_summary(variant)["kind"]

    sm = aws_client("sagemaker", region, endpoint_url)
    resource = f"endpoint {endpoint_name!r}"
    existing = aws_call(
        sm,
        "describe_endpoint",
        resource,
        EndpointName=endpoint_name,
        absent=r"ValidationException: Could not find endpoint",
    )
    previous = _current_variant(sm, existing) if existing else None
    if previous and previous["kind"] == "instances" and kind == "serverless":
        raise DeployError(
            f"sagemaker {resource} runs on instances (config "
            f"{existing.get('EndpointConfigName')}); SageMaker cannot update an instance "
            "endpoint to Serverless Inference: set deploy.sagemaker.endpoint_name to a new "
            f"endpoint, or delete this one (aws sagemaker delete-endpoint --endpoint-name "
            f"{endpoint_name}) and deploy again. The endpoint is unchanged."
        )

    key = f"{endpoint_name}/model-v{model_version}-{stamp}/model.tar.gz"
    s3_uri = s3_upload(aws_client("s3", region, endpoint_url), path, bucket, key)
    tags = [{"Key": "mlfolio:model-version", "Value": model_version}]
    aws_call(
        sm,
        "create_model",
        f"model {name!r}",
        ModelName=name,
        ExecutionRoleArn=role_arn,
        Tags=tags,
        PrimaryContainer={"Image": image_uri, "ModelDataUrl": s3_uri, "Environment": environment},
    )
    aws_call(
        sm,
        "create_endpoint_config",
        f"endpoint config {name!r}",
        EndpointConfigName=name,
        Tags=tags,
        ProductionVariants=[variant],
    )
    if existing is None:
        aws_call(
            sm,
            "create_endpoint",
            resource,
            EndpointName=endpoint_name,
            EndpointConfigName=name,
            Tags=tags,
        )
    else:
        aws_call(
            sm, "update_endpoint", resource, EndpointName=endpoint_name, EndpointConfigName=name
        )
    desc = wait_for_endpoint(sm, endpoint_name, name, timeout_s=wait_timeout_s, poll_s=poll_s)
    log.info("sagemaker endpoint %s serves %s (model v%s)", endpoint_name, name, model_version)
    previous_name = existing.get("EndpointConfigName") if existing else None
    return {
        "target": "sagemaker",
        "endpoint_name": endpoint_name,
        "endpoint_arn": desc.get("EndpointArn"),
        "endpoint_config_name": name,
        "variant": variant_summary(variant),
        "model_name": name,
        "model_data_url": s3_uri,
        "model_version": model_version,
        "image_uri": image_uri,
        # the deploy stage's status: the endpoint answers (wait_for_endpoint saw InService)
        "status": "deployed",
        "endpoint_status": desc.get("EndpointStatus"),
        "previous_endpoint_config_name": previous_name,
        "previous_variant": previous,
        "rollback": (
            _rollback(endpoint_name, previous_name, previous["kind"], kind) if previous else None
        ),
        "created": existing is None,
    }
