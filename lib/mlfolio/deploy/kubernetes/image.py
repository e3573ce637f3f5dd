"""The serving image: its Dockerfile and the .dockerignore allow-list of its build context."""

from __future__ import annotations

import json

from mlfolio.deploy.kubernetes.names import BASE_IMAGE, LIVENESS_PATH, USER_ID
from mlfolio.deploy.kubernetes.settings import KubernetesSettings

DOCKERFILE = "Dockerfile"
DOCKERIGNORE_FILES = (".dockerignore", "Dockerfile.dockerignore")
# What the Dockerfile copies from the project root (pyproject names README.md as the readme,
# so the build needs it).
BUILD_CONTEXT_FILES = ("pyproject.toml", "constraints.txt", "README.md")
BUILD_CONTEXT_DIRS = ("lib",)

ENTRYPOINT_SCRIPT = (
    'exec mlfolio serve --model "${MODEL_URI:?set MODEL_URI, e.g. models:/<name>@champion}" '
    '--host 0.0.0.0 --port "${PORT:-8080}" "$@"'
)
HEALTHCHECK_CODE = (
    "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s"
    f"{LIVENESS_PATH}' % os.environ.get('PORT', '8080'), timeout=4)"
)


def _mlfolio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlfolio")
    except PackageNotFoundError:
        return "unknown"


def dockerfile(settings: KubernetesSettings) -> str:
    """The serving image's Dockerfile (build context: the project root)."""
    entrypoint = json.dumps(["/bin/sh", "-c", ENTRYPOINT_SCRIPT, "mlfolio-serve"])
    healthcheck = json.dumps(["python", "-c", HEALTHCHECK_CODE])
    copied = " ".join(BUILD_CONTEXT_FILES)
    return f"""\
# mlfolio model server, written by mlfolio.deploy.kubernetes. It holds mlfolio and its pinned
# dependencies, not a model: at start it loads $MODEL_URI from the MLflow registry at
# $MLFLOW_TRACKING_URI. Build from the project root:
#   docker build -f <this folder>/Dockerfile -t {settings.image} .
FROM {BASE_IMAGE}

LABEL org.opencontainers.image.title="mlfolio model server" \\
      org.opencontainers.image.version="{_mlfolio_version()}"

ENV PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_ROOT_USER_ACTION=ignore \\
    PORT={settings.port}

RUN groupadd --system --gid {USER_ID} mlfolio \\
    && useradd --system --uid {USER_ID} --gid {USER_ID} --create-home \\
       --home-dir /home/mlfolio --shell /usr/sbin/nologin mlfolio

WORKDIR /opt/mlfolio
COPY {copied} ./
COPY {" ".join(BUILD_CONTEXT_DIRS)} ./{BUILD_CONTEXT_DIRS[0]}
RUN pip install --no-cache-dir -c constraints.txt . \\
    && rm -rf build {BUILD_CONTEXT_DIRS[0]}/*.egg-info

# Bytecode was compiled by pip; the root filesystem may be read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1
USER {USER_ID}:{USER_ID}
WORKDIR /home/mlfolio
EXPOSE {settings.port}
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \\
    CMD {healthcheck}
ENTRYPOINT {entrypoint}
CMD []
"""


def dockerignore() -> str:
    """An allow-list: only what the Dockerfile copies is sent to the builder."""
    allowed = "\n".join(f"!{name}" for name in (*BUILD_CONTEXT_FILES, *BUILD_CONTEXT_DIRS))
    return f"""\
# The build context is the project root: send only what the image installs. This keeps
# .venv, mlflow.db, mlartifacts/, runs/ and data/ out of the context (and the image).
*
{allowed}
lib/*.egg-info
**/__pycache__
**/*.py[cod]
"""
