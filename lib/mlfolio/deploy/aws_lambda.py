"""The lambda target: a deployment package for :mod:`mlfolio.lambda_handler`, and its rollout.

:func:`build_package` writes, into ``out_dir``:

- ``<name>-v<version>.zip`` — the ``mlfolio`` package (the handler and the modules the pickled
  pipeline imports), the MLflow model directory as ``mlfolio/model/``, ``mlfolio/model.json``
  (model URI, version, threshold) and ``requirements.txt``;
- ``requirements.txt`` — the runtime dependencies, pinned to this environment's versions;
- ``Dockerfile`` — a container image on ``public.ecr.aws/lambda/python:3.11`` with
  ``CMD ["mlfolio.lambda_handler.handler"]``: ``docker build out_dir``.

The image is the realistic route. Lambda caps a zip deployment at 250 MB unzipped, layers
included, and the dependencies exceed that on their own (installed here: xgboost 228 MB,
scipy 113 MB, pandas 79 MB, mlflow 69 MB, scikit-learn 51 MB, numpy 45 MB; xgboost also
pulls nvidia-nccl-cu12 on Linux); an image may hold 10 GB. The zip carries code and model
only, for a setup whose dependencies come from layers (trimmed to fit) or for the image
build, which unpacks it.

:func:`deploy_lambda` creates the function (or updates its code and configuration), waits
until Lambda has applied each change, publishes an immutable version and points two aliases
at it: ``model-v<model version>`` (kept, so every model version stays addressable for a
rollback) and ``live`` (what API Gateway should invoke: ``<function ARN>:live``), moved last
so that any failure before it leaves ``live`` where it was. Every AWS error becomes a
:class:`~mlfolio.deploy.DeployError` naming the call and the resource.

AWS settings come from the arguments or boto3's standard configuration (environment,
profile, instance role), so the same code runs against AWS and against a moto server.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import math
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlfolio.deploy import DeployError

log = logging.getLogger(__name__)

HANDLER = "mlfolio.lambda_handler.handler"
RUNTIME = "python3.11"
BASE_IMAGE = "public.ecr.aws/lambda/python:3.11"
LIVE_ALIAS = "live"
MODEL_DIR_IN_PACKAGE = "mlfolio/model"
META_IN_PACKAGE = "mlfolio/model.json"
# Lambda takes at most ~50 MB of zip in the request itself; bigger packages go through S3.
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024
# What the handler and the unpickled pipeline import beyond the model's own requirements
# (mlfolio.features imports mlfolio.config: pydantic, PyYAML).
HANDLER_REQUIREMENTS = ["pydantic", "pyyaml"]
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same inputs give the same zip (and CodeSha256)
_IMAGE_URI = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/\S+$")

DOCKERFILE = """\
# The realistic Lambda route: the dependencies exceed the 250 MB limit of zip packages,
# images may hold 10 GB. Build: docker build -t <repo>:<tag> .  (then push it to ECR and
# deploy_lambda("<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>", ...)).
FROM {base} AS unpack
COPY {zip_name} /tmp/package.zip
RUN python3 -m zipfile -e /tmp/package.zip /tmp/package

FROM {base}
COPY requirements.txt ${{LAMBDA_TASK_ROOT}}/
RUN pip install --no-cache-dir -r ${{LAMBDA_TASK_ROOT}}/requirements.txt
COPY --from=unpack /tmp/package/mlfolio ${{LAMBDA_TASK_ROOT}}/mlfolio
CMD ["{handler}"]
"""


# -- shared AWS plumbing (also used by mlfolio.deploy.sagemaker) ---------------------------
def aws_client(service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A boto3 client from the arguments or the standard configuration (env, profile, role)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.session.Session(region_name=region).client(
            service,
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
            ),
        )
    except BotoCoreError as exc:  # NoRegionError, a bad profile, ...
        raise DeployError(
            f"{service}: cannot create an AWS client: {exc} (pass region= or "
            "set AWS_DEFAULT_REGION / a profile)"
        ) from exc


def aws_call(
    client: Any, operation: str, resource: str, *, absent: str | None = None, **params: Any
) -> Any:
    """``client.<operation>(**params)``; an AWS error becomes a DeployError naming the call
    (service and operation) and the resource. With ``absent``, an error whose
    ``"<Code>: <Message>"`` matches that regular expression means "no such resource" and
    returns None."""
    from botocore.exceptions import BotoCoreError, ClientError

    service = client.meta.service_model.service_name
    try:
        return getattr(client, operation)(**params)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        error = f"{err.get('Code', 'error')}: {err.get('Message', exc)}"
        if absent is not None and re.match(absent, error):
            return None
        raise DeployError(f"{service} {operation} on {resource} failed: {error}") from exc
    except BotoCoreError as exc:
        raise DeployError(f"{service} {operation} on {resource} failed: {exc}") from exc


def s3_upload(s3: Any, path: Path, bucket: str, key: str) -> str:
    """Upload a file (multipart when large); return its s3:// URI."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{bucket}/{key}"
    try:
        s3.upload_file(str(path), bucket, key)
    except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
        raise DeployError(f"s3 upload_file of {path.name} to {uri} failed: {exc}") from exc
    return uri


def fetch_model_dir(model_uri_or_dir: str | Path, dst: Path) -> Path:
    """A local MLflow model directory: ``model_uri_or_dir`` itself when it is one, else the
    model downloaded into ``dst`` with ``mlflow.artifacts.download_artifacts``."""
    local = Path(model_uri_or_dir)
    if "://" not in str(model_uri_or_dir) and local.is_dir():
        if not (local / "MLmodel").is_file():
            raise DeployError(f"{local}: not an MLflow model directory (no MLmodel file)")
        return local
    import mlflow
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=str(model_uri_or_dir), dst_path=str(dst)
            )
        )
    except (MlflowException, OSError) as exc:
        raise DeployError(f"cannot download model {model_uri_or_dir}: {exc}") from exc
    if not (path / "MLmodel").is_file():
        raise DeployError(f"{model_uri_or_dir}: not an MLflow model (no MLmodel file in it)")
    return path


def registry_info(model_uri: str) -> dict[str, Any]:
    """Version and threshold of a ``models:/name/<version>`` or ``models:/name@alias`` URI
    (its ``mlfolio.threshold`` tag, set by the evaluate stage); empty for other URIs."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", str(model_uri))
    if not match:
        return {}
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, version, alias = match.groups()
    client = MlflowClient()
    try:
        mv = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, alias)
        )
    except MlflowException as exc:
        raise DeployError(f"registry lookup of {model_uri} failed: {exc}") from exc
    info: dict[str, Any] = {"model_name": name, "model_version": str(mv.version)}
    if "mlfolio.threshold" in (mv.tags or {}):
        info["threshold"] = float(mv.tags["mlfolio.threshold"])
    return info


# -- the package ----------------------------------------------------------------------------
def _package_sources() -> Iterator[tuple[Path, str]]:
    """The mlfolio package's Python files, as (path, name in the zip)."""
    import mlfolio

    root = Path(mlfolio.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or rel.parts[0] == "model":
            continue
        yield path, f"mlfolio/{rel.as_posix()}"


def requirements(model_dir: Path) -> list[str]:
    """The model's requirements plus the handler's, pinned to the versions installed here
    (a cloudpickled pipeline wants the scikit-learn it was pickled with)."""
    names: list[str] = []
    req_file = model_dir / "requirements.txt"
    if req_file.is_file():
        names = [
            ln.strip()
            for ln in req_file.read_text().splitlines()
            if ln.strip() and not ln.startswith(("#", "-"))
        ]
    out: list[str] = []
    seen: set[str] = set()
    for req in [*names, *HANDLER_REQUIREMENTS]:
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        if req != name:  # already has a specifier
            out.append(req)
            continue
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16  # Lambda needs the files world-readable
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build_package(
    model_uri_or_local_dir: str | Path,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    name: str = "mlfolio-lambda",
) -> Path:
    """Write the deployment zip (plus ``requirements.txt`` and a ``Dockerfile``) into
    ``out_dir``; return the zip's path.

    ``model_uri_or_local_dir`` is a local MLflow model directory or any URI MLflow can
    download (``models:/churn-classifier/3``, ``models:/churn-classifier@champion``,
    ``runs:/<id>/model``, ``s3://...``). ``threshold`` defaults to the registered version's
    ``mlfolio.threshold`` tag, else the handler's 0.5.

    The zip alone does not make a working Lambda function: its dependencies need layers
    (and exceed the 250 MB unzipped limit); the ``Dockerfile`` next to it builds the image
    that does.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = registry_info(str(model_uri_or_local_dir))
    if threshold is None:
        threshold = info.get("threshold")
    if threshold is not None and not 0 < float(threshold) < 1:
        raise DeployError(f"threshold: expected a number in (0, 1), got {threshold}")
    meta = {
        "model_uri": str(model_uri_or_local_dir),
        "model_version": info.get("model_version"),
        "threshold": None if threshold is None else float(threshold),
    }
    version = meta["model_version"]
    zip_path = out / (f"{name}-v{version}.zip" if version else f"{name}.zip")

    with tempfile.TemporaryDirectory(prefix="mlfolio-lambda-") as tmp:
        model_dir = fetch_model_dir(model_uri_or_local_dir, Path(tmp) / "model")
        reqs = requirements(model_dir)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for path, arcname in _package_sources():
                _add(zf, arcname, path.read_bytes())
            for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
                _add(
                    zf,
                    f"{MODEL_DIR_IN_PACKAGE}/{path.relative_to(model_dir).as_posix()}",
                    path.read_bytes(),
                )
            _add(zf, META_IN_PACKAGE, (json.dumps(meta, indent=2) + "\n").encode())
            _add(zf, "requirements.txt", ("\n".join(reqs) + "\n").encode())
        zip_path.write_bytes(buf.getvalue())

    (out / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (out / "Dockerfile").write_text(
        DOCKERFILE.format(base=BASE_IMAGE, zip_name=zip_path.name, handler=HANDLER)
    )
    size = zip_path.stat().st_size
    log.info("lambda package %s (%.1f MB, model %s)", zip_path, size / 1e6, model_uri_or_local_dir)
    if size > DIRECT_UPLOAD_LIMIT:
        log.warning(
            "%s is %.0f MB: deploy it with code_bucket= (direct uploads stop at ~50 MB)",
            zip_path.name,
            size / 1e6,
        )
    return zip_path


# -- the rollout ----------------------------------------------------------------------------
def alias_name(model_version: str | int) -> str:
    """``model-v<version>``, with characters Lambda does not allow in an alias replaced."""
    return "model-v" + re.sub(r"[^A-Za-z0-9_-]", "-", str(model_version))


def _wait(lam: Any, waiter: str, resource: str, wait_s: float, **params: Any) -> None:
    from botocore.exceptions import WaiterError

    delay = 2
    try:
        lam.get_waiter(waiter).wait(
            **params,
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, math.ceil(wait_s / delay))},
        )
    except WaiterError as exc:
        last = exc.last_response or {}
        reason = (
            last.get("StateReason")
            or last.get("LastUpdateStatusReason")
            or last.get("Error", {}).get("Message")
            or exc
        )
        raise DeployError(f"lambda {waiter} on {resource} failed: {reason}") from exc


_NOT_FOUND = "ResourceNotFoundException"


def _get_alias(lam: Any, function_name: str, name: str) -> dict[str, Any] | None:
    return aws_call(
        lam,
        "get_alias",
        f"alias {function_name}:{name}",
        absent=_NOT_FOUND,
        FunctionName=function_name,
        Name=name,
    )


def _point_alias(
    lam: Any, function_name: str, name: str, version: str, description: str
) -> dict[str, Any]:
    """Create the alias, or move it to ``version`` (conditionally on its current revision)."""
    resource = f"alias {function_name}:{name}"
    current = _get_alias(lam, function_name, name)
    if current is None:
        return aws_call(
            lam,
            "create_alias",
            resource,
            FunctionName=function_name,
            Name=name,
            FunctionVersion=version,
            Description=description,
        )
    params = {"RevisionId": current["RevisionId"]} if current.get("RevisionId") else {}
    return aws_call(
        lam,
        "update_alias",
        resource,
        FunctionName=function_name,
        Name=name,
        FunctionVersion=version,
        Description=description,
        **params,
    )


def _code(
    package: str | Path,
    function_name: str,
    model_version: str,
    code_bucket: str | None,
    region: str | None,
    endpoint_url: str | None,
) -> tuple[str, dict[str, Any], str]:
    """(package type, the Code parameters, where the code came from): an ECR image URI, or
    a zip sent directly or through S3."""
    if isinstance(package, str) and _IMAGE_URI.match(package):
        return "Image", {"ImageUri": package}, package
    path = Path(package)
    if not path.is_file():
        raise DeployError(
            f"lambda package {path} not found (expected the zip written by "
            "build_package, or an ECR image URI)"
        )
    if code_bucket is None and path.stat().st_size > DIRECT_UPLOAD_LIMIT:
        raise DeployError(
            f"{path.name} is {path.stat().st_size / 1e6:.0f} MB, over the "
            "~50 MB Lambda takes directly: pass code_bucket="
        )
    if code_bucket is None:
        return "Zip", {"ZipFile": path.read_bytes()}, str(path)
    key = f"{function_name}/v{model_version}/{path.name}"
    uri = s3_upload(aws_client("s3", region, endpoint_url), path, code_bucket, key)
    return "Zip", {"S3Bucket": code_bucket, "S3Key": key}, uri


def deploy_lambda(
    package: str | Path,
    *,
    function_name: str,
    role_arn: str,
    model_version: str | int,
    region: str | None = None,
    endpoint_url: str | None = None,
    memory_mb: int = 1024,
    timeout_s: int = 30,
    code_bucket: str | None = None,
    wait_s: float = 300,
) -> dict[str, Any]:
    """Create or update ``function_name`` from ``package``, publish a version, point
    ``model-v<model_version>`` and then ``live`` at it; return what was deployed.

    ``package`` is the zip from :func:`build_package` (sent in the request, or through
    ``code_bucket`` on S3 when given) or an ECR image URI built from its ``Dockerfile``.
    An existing function keeps its package type (Lambda cannot switch zip <-> image) and
    its other environment variables; ``MLFOLIO_MODEL_VERSION`` is set on every deploy.

    Raises DeployError naming the AWS call and resource. ``live`` moves last: a failure at
    any earlier step leaves it on the version it served before.
    """
    model_version = str(model_version)
    fn = f"function {function_name!r}"
    lam = aws_client("lambda", region, endpoint_url)
    package_type, code, source = _code(
        package, function_name, model_version, code_bucket, region, endpoint_url
    )
    description = f"mlfolio model v{model_version}"[:256]
    existing = aws_call(lam, "get_function", fn, absent=_NOT_FOUND, FunctionName=function_name)
    env = {"MLFOLIO_MODEL_VERSION": model_version}
    if existing is None:
        params: dict[str, Any] = {
            "FunctionName": function_name,
            "Role": role_arn,
            "Code": code,
            "PackageType": package_type,
            "MemorySize": memory_mb,
            "Timeout": timeout_s,
            "Description": description,
            "Environment": {"Variables": env},
            "Publish": False,
        }
        if package_type == "Zip":
            params.update(Runtime=RUNTIME, Handler=HANDLER)
        aws_call(lam, "create_function", fn, **params)
        _wait(lam, "function_active_v2", fn, wait_s, FunctionName=function_name)
    else:
        config = existing.get("Configuration", {})
        env = {**(config.get("Environment") or {}).get("Variables", {}), **env}
        updated = aws_call(lam, "update_function_code", fn, FunctionName=function_name, **code)
        _wait(lam, "function_updated_v2", fn, wait_s, FunctionName=function_name)
        aws_call(
            lam,
            "update_function_configuration",
            fn,
            FunctionName=function_name,
            Role=role_arn,
            MemorySize=memory_mb,
            Timeout=timeout_s,
            Description=description,
            Environment={"Variables": env},
        )
        _wait(lam, "function_updated_v2", fn, wait_s, FunctionName=function_name)
        log.info("updated %s (code sha %s)", fn, updated.get("CodeSha256"))
    published = aws_call(
        lam, "publish_version", fn, FunctionName=function_name, Description=description
    )
    version = str(published["Version"])
    _wait(
        lam,
        "published_version_active",
        f"{fn} version {version}",
        wait_s,
        FunctionName=function_name,
        Qualifier=version,
    )

    previous = _get_alias(lam, function_name, LIVE_ALIAS)
    model_alias = alias_name(model_version)
    aliases = {
        model_alias: _point_alias(lam, function_name, model_alias, version, description)["AliasArn"]
    }
    aliases[LIVE_ALIAS] = _point_alias(lam, function_name, LIVE_ALIAS, version, description)[
        "AliasArn"
    ]  # last, on purpose
    log.info("lambda %s: version %s is live (model v%s)", function_name, version, model_version)
    return {
        "target": "lambda",
        "function_name": function_name,
        "function_arn": published["FunctionArn"].rsplit(":", 1)[0],
        "version": version,
        "version_arn": published["FunctionArn"],
        "model_version": model_version,
        "aliases": aliases,
        "live_arn": aliases[LIVE_ALIAS],
        "previous_live_version": previous["FunctionVersion"] if previous else None,
        "package_type": package_type,
        "code": source,
        "code_sha256": published.get("CodeSha256"),
        "created": existing is None,
    }
