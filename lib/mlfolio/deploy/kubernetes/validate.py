"""The kubernetes target: a serving image and the manifests that run it, checked offline.

:func:`render` writes into a folder:

- ``Dockerfile`` — the ``mlfolio serve`` image: ``python:3.11-slim``, mlfolio installed with
  the project's pinned ``constraints.txt``, a non-root user (uid 10001), ``EXPOSE``, a
  ``HEALTHCHECK`` on ``/ping`` and an ``ENTRYPOINT`` serving ``$MODEL_URI`` on 0.0.0.0. The
  image holds no model: the pod loads the version named by ``MODEL_URI`` from the registry
  at ``MLFLOW_TRACKING_URI`` when it starts, so one image serves every model and version.
  Build it from the project root: ``docker build -f <folder>/Dockerfile -t <image> .``
- ``.dockerignore`` and ``Dockerfile.dockerignore`` (same allow-list). Docker reads
  ``.dockerignore`` only at the root of the build context, and BuildKit reads
  ``<Dockerfile>.dockerignore`` next to the Dockerfile first — the second one is what keeps
  ``.venv``, ``mlflow.db``, ``runs/`` and ``data/`` out of the context in the command above.
- ``kubernetes.yaml`` — Deployment, Service (ClusterIP, 80 → ``http``),
  HorizontalPodAutoscaler (autoscaling/v2, CPU) and PodDisruptionBudget (policy/v1), ready
  for ``kubectl apply -f``.
- ``inferenceservice.yaml`` — the KServe alternative: a ``serving.kserve.io/v1beta1``
  InferenceService whose custom predictor runs the same image (``PROTOCOL=v2``, KServe's
  switch for custom containers), in RawDeployment mode with CPU autoscaling.

Manifests are built as Python dicts and validated before anything is written:
:func:`validate_documents` checks every core document against the Kubernetes OpenAPI
schemas with ``kubernetes_validate`` (strict: unknown fields fail), then what those schemas
cannot see but the API server rejects: name and label formats, selectors that match the
pod template, named ports, quantities and requests above limits, an HPA or PDB pointing at
nothing. No schema ships for the InferenceService CRD: its predictor is a PodSpec plus
KServe's own keys, so the PodSpec part is validated as a core Pod and the rest by hand.

Deployability concerns that still give valid manifests (a ``:latest`` image, a tracking URI
a pod cannot reach such as ``sqlite:///`` or ``localhost``) are returned as ``warnings`` in
the summary and logged; invalid settings raise :class:`~mlfolio.deploy.DeployError` naming
the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mlfolio.deploy import DeployError

log = logging.getLogger(__name__)

KUBERNETES_VERSION = "1.30.0"
BASE_IMAGE = "python:3.11-slim"
USER_ID = 10001  # numeric, so runAsNonRoot can verify the image's USER
CONTAINER_NAME = "model-server"
KSERVE_CONTAINER_NAME = "kserve-container"  # the container KServe treats as the predictor
KSERVE_DEPLOYMENT_MODE = "RawDeployment"  # "Standard" since KServe 0.15, which still takes this
PORT_NAME = "http"
# Routes of `mlfolio serve` used here (see mlfolio/serve.py).
LIVENESS_PATH = "/ping"
READINESS_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"
TOKEN_ENV = "MLFOLIO_SERVE_TOKEN"  # = mlfolio.serve.TOKEN_ENV (not imported: pulls in pandas)
TOKEN_SECRET_KEY = "token"
LABEL_PREFIX = "mlfolio/"
# Names are DNS-1035 labels (what Services and KServe need). KServe appends "-predictor"
# (and Knative "-00001-private") to the InferenceService name, within 63 characters.
MAX_NAME_LENGTH = 45
MIN_MEMORY_BYTES = 16 * 2**20  # below this a memory value is a typo ("512m" = 0.512 bytes)

MANIFESTS_FILE = "kubernetes.yaml"
INFERENCE_SERVICE_FILE = "inferenceservice.yaml"
DOCKERFILE = "Dockerfile"
DOCKERIGNORE_FILES = (".dockerignore", "Dockerfile.dockerignore")
# What the Dockerfile copies from the project root (pyproject names README.md as the readme,
# so the build needs it).
BUILD_CONTEXT_FILES = ("pyproject.toml", "constraints.txt", "README.md")
BUILD_CONTEXT_DIRS = ("lib",)


class ManifestError(DeployError):
    """Manifests failed validation; ``problems`` holds one line per field at fault."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}\n" + "\n".join(f"  - {p}" for p in problems))


# -- names, labels, quantities ---------------------------------------------------------
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dns_name(value: str, *, field: str = "model_name", max_length: int = MAX_NAME_LENGTH) -> str:
    """A DNS-1035 label made from a model name: ``"Breast_Cancer v2"`` → ``breast-cancer-v2``.

    Lowercased, accents dropped, every run of other characters becomes one ``-``; a leading
    digit gets a ``model-`` prefix. Longer than ``max_length``, it is cut and given a hash of
    the original so two long names stay distinct. Raises :class:`DeployError` naming
    ``field`` when no letter or digit is left.
    """
    text = re.sub(r"[^a-z0-9]+", "-", _ascii(value).lower()).strip("-")
    if not text:
        raise DeployError(f"{field} {value!r}: no Kubernetes name can be made from it (it has "
                          "no ASCII letter or digit); pass name='my-model'")
    if text[0].isdigit():
        text = f"model-{text}"
    if len(text) > max_length:
        text = f"{text[: max_length - 9].rstrip('-')}-{_short_hash(value)}"
    return text


def label_value(value: str, *, field: str) -> str:
    """A valid label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both ends)."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", _ascii(value)).strip("-_.")
    if len(text) > 63:
        text = f"{text[:54].rstrip('-_.')}-{_short_hash(value)}"
    if not text:
        raise DeployError(f"{field} {value!r}: no label value can be made from it (it has no "
                          "ASCII letter or digit)")
    return text


_QUANTITY = re.compile(r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
                       r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?\d+))?")
_SUFFIXES = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal(10**3),
             "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
             "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10),
             "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
             "Pi": Decimal(2**50), "Ei": Decimal(2**60)}


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``250m``, ``1``, ``0.5``, ``512Mi``, ``1e3``) as a number.

    Raises ValueError for anything the API server would refuse.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a quantity string such as '250m' or '512Mi', got "
                         f"{type(value).__name__}")
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 250m, 1, 0.5, 512Mi, 1Gi)")
    number = Decimal(match["num"])
    if match["suffix"]:
        return number * _SUFFIXES[match["suffix"]]
    if match["exp"]:
        return number.scaleb(int(match["exp"]))
    return number


# -- settings ----------------------------------------------------------------------------
_IMAGE_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_HOST = (rf"(?:{_IMAGE_DOMAIN}(?:\.{_IMAGE_DOMAIN})+(?::\d+)?|{_IMAGE_DOMAIN}:\d+"
               r"|localhost)")
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"(?:(?P<host>{_IMAGE_HOST})/)?(?P<path>{_IMAGE_PATH}(?:/{_IMAGE_PATH})*)"
                    r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?")
_MODEL_URI = re.compile(r"models:/(?P<name>[^@]+?)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "ip6-localhost"}


@dataclass(frozen=True)
class KubernetesSettings:
    """One model's kubernetes deployment, validated at construction.

    ``model_uri`` defaults to the pinned ``models:/<model_name>/<model_version>``; an alias
    URI (``models:/<name>@champion``) is accepted too, and then a pod started later loads
    whatever version the alias points to by then (the version label keeps the render-time
    one). ``replicas`` is the fixed count when ``autoscale`` is off; with autoscaling the HPA
    owns the count between ``min_replicas`` and ``max_replicas`` and the Deployment leaves
    ``spec.replicas`` out (Kubernetes' advice, or every ``kubectl apply`` resets it).
    Secrets never go into the manifests: ``token_secret`` names a Secret whose ``token`` key
    becomes ``$MLFOLIO_SERVE_TOKEN``, ``env_from_secret`` a Secret loaded as environment
    (tracking-server or object-store credentials, or ``MLFLOW_TRACKING_URI`` itself).
    """

    model_name: str
    model_version: str
    image: str
    model_uri: str | None = None
    name: str | None = None  # resource name; None = dns_name(model_name)
    namespace: str = "default"
    tracking_uri: str | None = None
    port: int = 8080
    autoscale: bool = True
    replicas: int = 2
    min_replicas: int = 2
    max_replicas: int = 6
    target_cpu_utilization: int = 70
    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    token_secret: str | None = None
    env_from_secret: str | None = None
    read_only_root_filesystem: bool = True
    kubernetes_version: str = KUBERNETES_VERSION
    resource_name: str = field(init=False)
    warnings: tuple[str, ...] = field(init=False, compare=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> KubernetesSettings:
        """Settings from plain data (a parameter file); unknown keys are refused by name."""
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [key for key in values if key not in known]
        if unknown:
            raise DeployError(f"kubernetes target: unknown setting{'s' if len(unknown) > 1 else ''}"
                              f" {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
                   and f.default is dataclasses.MISSING]
        if missing:
            raise DeployError(f"kubernetes target: missing setting{'s' if len(missing) > 1 else ''}"
                              f" {', '.join(map(repr, missing))}")
        return cls(**values)

    def __post_init__(self) -> None:
        problems: list[str] = []
        warnings: list[str] = []
        set_ = object.__setattr__  # frozen: normalised values are set once, here

        if isinstance(self.model_version, int) and not isinstance(self.model_version, bool):
            set_(self, "model_version", str(self.model_version))
        for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            value = getattr(self, name)  # YAML reads `cpu_limit: 1` as a number
            if isinstance(value, int | float) and not isinstance(value, bool):
                set_(self, name, str(value))
        for name in ("model_name", "model_version", "image", "namespace", "cpu_request",
                     "cpu_limit", "memory_request", "memory_limit", "kubernetes_version"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                problems.append(f"{name}: expected a non-empty string, got "
                                f"{getattr(self, name)!r}")
        for name in ("model_uri", "name", "tracking_uri", "token_secret", "env_from_secret"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                problems.append(f"{name}: expected a non-empty string or None, got {value!r}")
        for name in ("autoscale", "read_only_root_filesystem"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: expected true or false, got {getattr(self, name)!r}")
        bounds = {"port": (1024, 65535), "replicas": (1, 1000), "min_replicas": (1, 1000),
                  "max_replicas": (1, 1000), "target_cpu_utilization": (1, 100)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name}: expected an integer, got {value!r}")
            elif not low <= value <= high:
                why = " (a non-root user cannot bind below 1024)" if name == "port" else ""
                problems.append(f"{name}: must be between {low} and {high}, got {value}{why}")
        if problems:  # the checks below rely on the types
            raise DeployError("kubernetes target: invalid settings\n"
                              + "\n".join(f"  {p}" for p in problems))

        # names
        if not re.fullmatch(r"\d+", self.model_version):
            problems.append(f"model_version: expected a registry version number such as '3', "
                            f"got {self.model_version!r}")
        resource_name = self.name
        if resource_name is None:
            try:
                resource_name = dns_name(self.model_name)
            except DeployError as exc:
                problems.append(str(exc))
        elif not _DNS1035_LABEL.fullmatch(resource_name) or len(resource_name) > MAX_NAME_LENGTH:
            problems.append(f"name: {resource_name!r} must be a DNS-1035 label of at most "
                            f"{MAX_NAME_LENGTH} characters: lowercase letters, digits and '-', "
                            "starting with a letter (e.g. 'churn-classifier')")
        set_(self, "resource_name", resource_name or "")
        if not re.fullmatch(r"\d+\.\d+(\.\d+)?", self.kubernetes_version):
            problems.append(f"kubernetes_version: expected e.g. '1.30.0', got "
                            f"{self.kubernetes_version!r}")
        if not _DNS1123_LABEL.fullmatch(self.namespace) or len(self.namespace) > 63:
            problems.append(f"namespace: {self.namespace!r} is not a valid namespace (lowercase "
                            "letters, digits and '-', at most 63 characters)")
        for name in ("token_secret", "env_from_secret"):
            value = getattr(self, name)
            if value is not None and (not _DNS1123_SUBDOMAIN.fullmatch(value) or len(value) > 253):
                problems.append(f"{name}: {value!r} is not a valid Secret name (lowercase "
                                "letters, digits, '-' and '.')")
        if resource_name:  # else the name problem above says it already
            try:
                label_value(self.model_name, field="model_name")
            except DeployError as exc:
                problems.append(str(exc))

        # model URI: what `mlfolio serve --model` accepts, for this model
        if self.model_uri is None:
            set_(self, "model_uri", f"models:/{self.model_name}/{self.model_version}")
        else:
            match = _MODEL_URI.fullmatch(self.model_uri)
            if match is None:
                problems.append(f"model_uri: {self.model_uri!r} must be models:/<name>@<alias> "
                                "or models:/<name>/<version> (what `mlfolio serve` loads)")
            elif match["name"] != self.model_name:
                problems.append(f"model_uri: {self.model_uri!r} names model {match['name']!r}, "
                                f"not model_name {self.model_name!r}")
            elif match["version"] and match["version"] != self.model_version:
                problems.append(f"model_uri: {self.model_uri!r} pins version {match['version']}, "
                                f"not model_version {self.model_version!r}")

        # image
        image = _IMAGE.fullmatch(self.image)
        if image is None:
            problems.append(f"image: {self.image!r} is not an image reference such as "
                            "registry.example.com/team/mlfolio-serve:0.1.0 (lowercase "
                            "repository, optional :tag and @sha256:digest)")
        elif not image["digest"] and image["tag"] in (None, "latest"):
            warnings.append(f"image {self.image!r} is not pinned (no tag, or :latest): a "
                            "rollout cannot be reproduced and re-applying the same manifest "
                            "will not roll the pods; push a version tag or a digest")

        # tracking URI
        if self.tracking_uri is None:
            if self.env_from_secret is None:
                warnings.append("no tracking_uri: the pods need MLFLOW_TRACKING_URI (set "
                                "tracking_uri, or put it in the env_from_secret Secret), or "
                                "the server falls back to a SQLite file inside the container")
        else:
            try:
                parts = urlsplit(self.tracking_uri)
                host = (parts.hostname or "").lower()
            except ValueError as exc:
                problems.append(f"tracking_uri: {self.tracking_uri!r} is not a URI ({exc})")
                parts, host = urlsplit(""), ""
            if parts.password:
                problems.append("tracking_uri: has a password in it; it would be written into "
                                "the manifests. Put the URI in a Secret and name it in "
                                "env_from_secret")
            scheme = parts.scheme.lower()
            if not scheme or len(scheme) == 1 or scheme in ("file", "sqlite"):
                warnings.append(f"tracking_uri {self.tracking_uri!r} is a local store: a pod "
                                "cannot read it. Use the tracking server's URL (http(s)://...) "
                                "or a database the cluster can reach")
            elif host in _LOCAL_HOSTS:
                warnings.append(f"tracking_uri {self.tracking_uri!r} points at localhost, which "
                                "inside a pod is the pod itself; use an address the cluster "
                                "can reach")

        # replicas
        if self.min_replicas > self.max_replicas:
            problems.append(f"min_replicas: {self.min_replicas} is above max_replicas "
                            f"{self.max_replicas}")
        elif self.autoscale and not self.min_replicas <= self.replicas <= self.max_replicas:
            problems.append(f"replicas: {self.replicas} is outside min_replicas..max_replicas "
                            f"({self.min_replicas}..{self.max_replicas}); with autoscale the "
                            "HPA owns the count")

        # resources
        for kind, unit_help in (("cpu", "e.g. 250m or 1"), ("memory", "e.g. 512Mi or 1Gi")):
            parsed: dict[str, Decimal] = {}
            for end in ("request", "limit"):
                name = f"{kind}_{end}"
                text = getattr(self, name)
                try:
                    parsed[end] = parse_quantity(text)
                except ValueError:
                    problems.append(f"{name}: {text!r} is not a Kubernetes quantity ({unit_help})")
                    continue
                if parsed[end] <= 0:
                    problems.append(f"{name}: must be above zero, got {text!r}")
                elif kind == "memory" and parsed[end] < MIN_MEMORY_BYTES:
                    hint = f"; did you mean {text[:-1]}Mi?" if text.endswith("m") else ""
                    problems.append(f"{name}: {text!r} is only {parsed[end]:f} bytes{hint}")
            if len(parsed) == 2 and parsed["request"] > parsed["limit"]:
                problems.append(f"{kind}_request: {getattr(self, f'{kind}_request')!r} is above "
                                f"{kind}_limit {getattr(self, f'{kind}_limit')!r} (Kubernetes "
                                "refuses a request above its limit)")
        if problems:
            raise DeployError("kubernetes target: invalid settings\n"
                              + "\n".join(f"  {p}" for p in problems))
        set_(self, "warnings", tuple(warnings))

    # derived values
    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.resource_name}

    @property
    def labels(self) -> dict[str, str]:
        version = label_value(self.model_version, field="model_version")
        return {
            **self.selector,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": "mlfolio",
            "app.kubernetes.io/managed-by": "mlfolio",
            "app.kubernetes.io/version": version,
            f"{LABEL_PREFIX}model-name": label_value(self.model_name, field="model_name"),
            f"{LABEL_PREFIX}model-version": version,
        }

    @property
    def annotations(self) -> dict[str, str]:
        return {f"{LABEL_PREFIX}model-name": self.model_name,
                f"{LABEL_PREFIX}model-uri": str(self.model_uri)}


def settings_from(settings: KubernetesSettings | None = None, /,
                  **fields: Any) -> KubernetesSettings:
    """``settings`` with ``fields`` replaced, or new settings from ``fields``."""
    if settings is None:
        return KubernetesSettings.from_mapping(fields)
    init = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}
    pinned = f"models:/{settings.model_name}/{settings.model_version}"
    if settings.model_uri == pinned and "model_uri" not in fields:
        init["model_uri"] = None  # the default follows a new model_name/model_version
    return KubernetesSettings.from_mapping({**init, **fields})


# -- the image ---------------------------------------------------------------------------
ENTRYPOINT_SCRIPT = (
    'exec mlfolio serve --model "${MODEL_URI:?set MODEL_URI, e.g. models:/<name>@champion}" '
    '--host 0.0.0.0 --port "${PORT:-8080}" "$@"'
)
HEALTHCHECK_CODE = ("import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s"
                    f"{LIVENESS_PATH}' % os.environ.get('PORT', '8080'), timeout=4)")


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
COPY {' '.join(BUILD_CONTEXT_DIRS)} ./{BUILD_CONTEXT_DIRS[0]}
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


# -- the manifests -----------------------------------------------------------------------
def _env(s: KubernetesSettings, *, kserve: bool = False) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "MODEL_URI", "value": s.model_uri}]
    if s.tracking_uri is not None:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": s.tracking_uri})
    if not kserve:  # Knative reserves PORT (and sets it to the container port itself)
        env.append({"name": "PORT", "value": str(s.port)})
    if s.token_secret is not None:
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": s.token_secret, "key": TOKEN_SECRET_KEY}}})
    if kserve:
        env.append({"name": "PROTOCOL", "value": "v2"})
    return env


def _probe(path: str, port: int | str, *, period: int, timeout: int,
           failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period,
            "timeoutSeconds": timeout, "failureThreshold": failures}


def _container(s: KubernetesSettings, *, kserve: bool = False) -> dict[str, Any]:
    # Knative (KServe serverless) wants probes on the container port by number and the
    # port named http1; a plain Deployment reads best with the named port.
    port_name = "http1" if kserve else PORT_NAME
    probe_port: int | str = s.port if kserve else PORT_NAME
    container: dict[str, Any] = {
        "name": KSERVE_CONTAINER_NAME if kserve else CONTAINER_NAME,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": port_name, "containerPort": s.port, "protocol": "TCP"}],
        "env": _env(s, kserve=kserve),
    }
    if s.env_from_secret is not None:
        container["envFrom"] = [{"secretRef": {"name": s.env_from_secret}}]
    container.update({
        "resources": {"requests": {"cpu": s.cpu_request, "memory": s.memory_request},
                      "limits": {"cpu": s.cpu_limit, "memory": s.memory_limit}},
        # The port opens once the model is loaded; up to 5 minutes before liveness counts.
        "startupProbe": _probe(LIVENESS_PATH, probe_port, period=5, timeout=2, failures=60),
        "readinessProbe": _probe(READINESS_PATH, probe_port, period=10, timeout=2, failures=3),
        "livenessProbe": _probe(LIVENESS_PATH, probe_port, period=15, timeout=5, failures=3),
        # Endpoints are removed asynchronously: keep answering a few seconds after SIGTERM.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": s.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
        },
    })
    if s.read_only_root_filesystem:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    return container


def _pod_spec(s: KubernetesSettings, container: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                            "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if s.read_only_root_filesystem:
        # MLflow downloads the model's artifacts into a temporary directory.
        spec["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    return spec


def _metadata(s: KubernetesSettings, **extra: Any) -> dict[str, Any]:
    return {"name": s.resource_name, "namespace": s.namespace, "labels": s.labels, **extra}


def _pod_annotations(s: KubernetesSettings) -> dict[str, str]:
    return {**s.annotations, "prometheus.io/scrape": "true", "prometheus.io/port": str(s.port),
            "prometheus.io/path": METRICS_PATH}


def deployment(s: KubernetesSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if not s.autoscale:
        spec["replicas"] = s.replicas
    spec.update({
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": s.selector},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": s.labels, "annotations": _pod_annotations(s)},
            "spec": {
                **_pod_spec(s, _container(s)),
                "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": s.selector},
                }],
            },
        },
    })
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(s, annotations=s.annotations), "spec": spec}


def service(s: KubernetesSettings) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(s),
            "spec": {"type": "ClusterIP", "selector": s.selector,
                     "ports": [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME,
                                "protocol": "TCP"}]}}


def horizontal_pod_autoscaler(s: KubernetesSettings) -> dict[str, Any]:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(s),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": s.resource_name},
                "minReplicas": s.min_replicas, "maxReplicas": s.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": s.target_cpu_utilization}}}],
            }}


def pod_disruption_budget(s: KubernetesSettings) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(s),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": s.selector}}}


def _replica_floor(s: KubernetesSettings) -> int:
    return s.min_replicas if s.autoscale else s.replicas


def build_manifests(s: KubernetesSettings) -> list[dict[str, Any]]:
    """The core documents of ``kubernetes.yaml``, in apply order.

    The PodDisruptionBudget (minAvailable 1) is left out when a single replica may run: it
    would block every node drain.
    """
    docs = [deployment(s), service(s)]
    if s.autoscale:
        docs.append(horizontal_pod_autoscaler(s))
    if _replica_floor(s) >= 2:
        docs.append(pod_disruption_budget(s))
    return docs


def inference_service(s: KubernetesSettings) -> dict[str, Any]:
    """The KServe InferenceService running the same image as a custom predictor."""
    low, high = (s.min_replicas, s.max_replicas) if s.autoscale else (s.replicas, s.replicas)
    predictor: dict[str, Any] = {
        "minReplicas": low, "maxReplicas": high,
        "scaleMetric": "cpu", "scaleTarget": s.target_cpu_utilization,
        "labels": {k: v for k, v in s.labels.items() if k.startswith(LABEL_PREFIX)},
        "annotations": _pod_annotations(s),
        **_pod_spec(s, _container(s, kserve=True)),
    }
    # Without app.kubernetes.io/name: KServe copies these labels to its pods, which the
    # Service of kubernetes.yaml would then select too, were both applied.
    labels = {k: v for k, v in s.labels.items() if k not in s.selector}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _metadata(s, labels=labels, annotations={
                **s.annotations,
                "serving.kserve.io/deploymentMode": KSERVE_DEPLOYMENT_MODE,
                "serving.kserve.io/autoscalerClass": "hpa"}),
            "spec": {"predictor": predictor}}


def _dump_yaml(docs: Iterable[dict[str, Any]], header: str) -> str:
    body = yaml.safe_dump_all(list(docs), sort_keys=False, explicit_start=True, width=4096)
    return header + body


# -- validation ---------------------------------------------------------------------------
def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        raise DeployError("kubernetes-validate is not installed: `pip install "
                          "kubernetes-validate` (it holds the Kubernetes schemas the manifests "
                          "are checked against offline)") from None
    return kubernetes_validate


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "<document>"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_problems(err: Any, prefix: list[Any]) -> list[str]:
    """Plain words for one jsonschema error: the field path, and what was expected."""
    path = [*prefix, *err.path]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extras = [key for key in err.instance if key not in allowed]
        return [f"{_dotted([*path, key])}: unknown field {key!r}" for key in extras]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [key for key in err.validator_value if key not in err.instance]
        return [f"{_dotted([*path, key])}: required field is missing" for key in missing]
    if err.validator == "type":
        expected = [t for t in ([err.validator_value] if isinstance(err.validator_value, str)
                                else err.validator_value) if t != "null"]
        return [f"{_dotted(path)}: expected {' or '.join(expected)}, got "
                f"{type(err.instance).__name__} {_short(err.instance)}"]
    return [f"{_dotted(path)}: {err.message}"]


def _without_nulls(node: Any) -> Any:
    """The API server reads ``key: null`` as unset; so do the checks (required keys)."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node]
    return node


def _schema_check(kv: Any, doc: dict[str, Any], version: str, prefix: list[Any],
                  where: str) -> list[str]:
    try:
        kv.validate(_without_nulls(doc), version, strict=True)
    except kv.ValidationError as err:
        return [f"{where}: {p}" for p in _schema_problems(err, prefix)]
    except kv.SchemaNotFoundError as err:
        return [f"{where}: no Kubernetes {err.version} schema for apiVersion "
                f"{doc.get('apiVersion')!r} kind {doc.get('kind')!r} (a removed API version, "
                "a typo, or a custom resource)"]
    except kv.utils.VersionNotSupportedError:
        raise DeployError(f"kubernetes-validate {kv.__version__} has no schemas for "
                          f"Kubernetes {version}") from None
    return []


# KServe's PredictorSpec = a PodSpec (inline) + these keys (ComponentExtensionSpec) + one of
# the framework specs. Types of the keys this module writes are checked; the rest only named.
_KSERVE_EXTENSION_KEYS = {
    "minReplicas": int, "maxReplicas": int, "scaleTarget": int, "scaleMetric": str,
    "scaleMetricType": str, "containerConcurrency": int, "timeout": int,
    "canaryTrafficPercent": int, "labels": dict, "annotations": dict, "logger": dict,
    "batcher": dict, "deploymentStrategy": dict, "autoScaling": dict, "workerSpec": dict,
    "storageUris": list,
}
_KSERVE_FRAMEWORK_KEYS = {"model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton",
                          "onnx", "huggingface", "pmml", "lightgbm", "paddle"}
_KSERVE_MODES = {"Standard", "RawDeployment", "Knative", "Serverless", "ModelMesh"}


def _check_inference_service(kv: Any, doc: dict[str, Any], version: str,
                             where: str) -> list[str]:
    problems: list[str] = []

    def bad(path: str, message: str) -> None:
        problems.append(f"{where}: {path}: {message}")

    if doc.get("apiVersion") != "serving.kserve.io/v1beta1":
        bad("apiVersion", f"expected 'serving.kserve.io/v1beta1', got {doc.get('apiVersion')!r}")
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec"):
            bad(key, f"unknown field {key!r}")
    meta = doc.get("metadata")
    if isinstance(meta, dict):  # its name is checked with the other documents' names
        mode = (meta.get("annotations") or {}).get("serving.kserve.io/deploymentMode")
        if mode is not None and mode not in _KSERVE_MODES:
            bad('metadata.annotations["serving.kserve.io/deploymentMode"]',
                f"{mode!r} is not one of {sorted(_KSERVE_MODES)}")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        bad("spec", "expected a mapping with 'predictor'")
        return problems
    for key in spec:
        if key not in ("predictor", "transformer", "explainer"):
            bad(f"spec.{key}", f"unknown field {key!r}")
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        bad("spec.predictor", "required field is missing (expected a mapping)")
        return problems

    pod_spec: dict[str, Any] = {}
    for key, value in predictor.items():
        if key in _KSERVE_EXTENSION_KEYS:
            expected = _KSERVE_EXTENSION_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, expected):
                bad(f"spec.predictor.{key}", f"expected {expected.__name__}, got "
                    f"{type(value).__name__} {_short(value)}")
        elif key in _KSERVE_FRAMEWORK_KEYS:
            if "containers" in predictor:
                bad(f"spec.predictor.{key}", "a custom predictor (containers) cannot also "
                    f"set {key!r}")
        else:
            pod_spec[key] = value
    low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        bad("spec.predictor.minReplicas", f"{low} is above maxReplicas {high}")
    metric = predictor.get("scaleMetric")
    if metric is not None and metric not in ("cpu", "memory", "concurrency", "rps"):
        bad("spec.predictor.scaleMetric", f"{metric!r} is not cpu, memory, concurrency or rps")

    # The PodSpec part, against the core schema of a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": pod_spec}
    problems += [p.replace(f"{where}: spec", f"{where}: spec.predictor", 1)
                 for p in _schema_check(kv, pod, version, [], where)]

    containers = predictor.get("containers")
    if not isinstance(containers, list) or not containers:
        bad("spec.predictor.containers", "a custom predictor needs one container")
        return problems
    first = containers[0]
    if not isinstance(first, dict):
        return problems
    if first.get("name") != KSERVE_CONTAINER_NAME:
        bad("spec.predictor.containers[0].name", f"KServe serves from the container named "
            f"{KSERVE_CONTAINER_NAME!r}, got {first.get('name')!r}")
    if not first.get("image"):
        bad("spec.predictor.containers[0].image", "required field is missing")
    env = {e.get("name"): e.get("value") for e in first.get("env") or [] if isinstance(e, dict)}
    if env.get("PROTOCOL") not in ("v1", "v2"):
        bad("spec.predictor.containers[0].env", "PROTOCOL must be v1 or v2 (KServe's protocol "
            f"switch for custom predictors), got {env.get('PROTOCOL')!r}")
    if "MODEL_URI" not in env:
        bad("spec.predictor.containers[0].env", "MODEL_URI is missing: the server would not "
            "know which model to load")
    ports = first.get("ports")
    if not isinstance(ports, list) or not any(isinstance(p, dict) and "containerPort" in p
                                              for p in ports):
        bad("spec.predictor.containers[0].ports", "expected the server's containerPort")
    return problems


def _ref(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{doc.get('kind', '<no kind>')}/{meta.get('name', '<no name>')}"


def _check_metadata(doc: dict[str, Any], where: str) -> list[str]:
    """Name, namespace and label formats (the schemas only say 'string')."""
    problems: list[str] = []
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return [f"{where}: metadata: required field is missing"]
    name = meta.get("name")
    if not isinstance(name, str):
        problems.append(f"{where}: metadata.name: required field is missing")
    elif doc.get("kind") in ("Service", "InferenceService"):
        if not _DNS1035_LABEL.fullmatch(name) or len(name) > 63:
            problems.append(f"{where}: metadata.name: {name!r} is not a DNS-1035 label "
                            "(lowercase letters, digits, '-', starting with a letter, 63 max)")
    elif not _DNS1123_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        problems.append(f"{where}: metadata.name: {name!r} is not a DNS-1123 subdomain "
                        "(lowercase letters, digits, '-' and '.')")
    namespace = meta.get("namespace")
    if namespace is not None and (not isinstance(namespace, str)
                                  or not _DNS1123_LABEL.fullmatch(namespace)):
        problems.append(f"{where}: metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for path, labels in _all_labels(doc):
        for key, value in labels.items():
            prefix, _, local = str(key).rpartition("/")
            if (prefix and (not _DNS1123_SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253)) \
                    or not local or len(local) > 63 or not _LABEL_VALUE.fullmatch(local):
                problems.append(f"{where}: {_dotted(path)}: {key!r} is not a valid label key")
            if not isinstance(value, str) or len(value) > 63 \
                    or not _LABEL_VALUE.fullmatch(value):
                problems.append(f"{where}: {_dotted([*path, key])}: {value!r} is not a valid "
                                "label value (63 characters of letters, digits, '-', '_', '.', "
                                "alphanumeric at both ends)")
    return problems


def _all_labels(doc: dict[str, Any]) -> list[tuple[list[Any], dict[str, Any]]]:
    found = []
    for path in (["metadata", "labels"], ["spec", "template", "metadata", "labels"],
                 ["spec", "selector", "matchLabels"], ["spec", "predictor", "labels"]):
        node: Any = doc
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            found.append((path, node))
    return found


def _pod_template(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    template = doc.get("spec", {}).get("template", {})
    return template.get("metadata", {}).get("labels", {}) or {}, template.get("spec", {}) or {}


def _matches(selector: Any, labels: Mapping[str, Any]) -> bool:
    return isinstance(selector, dict) and bool(selector) and all(
        labels.get(k) == v for k, v in selector.items())


def _check_workload(doc: dict[str, Any], where: str) -> list[str]:
    """What the API server checks in a Deployment beyond its schema."""
    problems: list[str] = []
    labels, pod = _pod_template(doc)
    selector = doc["spec"].get("selector", {}).get("matchLabels")
    if not _matches(selector, labels):
        problems.append(f"{where}: spec.selector.matchLabels: {selector!r} does not match "
                        f"spec.template.metadata.labels")
    for i, container in enumerate(pod.get("containers") or []):
        base = f"spec.template.spec.containers[{i}]"
        if not container.get("image"):
            problems.append(f"{where}: {base}.image: required field is missing")
        ports = {p.get("name") for p in container.get("ports") or [] if p.get("name")}
        for port_name in ports:
            if len(port_name) > 15 or not _PORT_NAME.fullmatch(port_name) \
                    or "--" in port_name or not re.search("[a-z]", port_name):
                problems.append(f"{where}: {base}.ports: name {port_name!r} is not a valid "
                                "port name (15 characters max, lowercase letters, digits, '-')")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = (container.get(probe) or {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{where}: {base}.{probe}.httpGet.port: no container port is "
                                f"named {port!r}")
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for kind, group in (("requests", requests), ("limits", limits)):
            for resource, text in group.items():
                try:
                    parse_quantity(text)
                except ValueError as exc:
                    problems.append(f"{where}: {base}.resources.{kind}.{resource}: {exc}")
        for resource in set(requests) & set(limits):
            try:
                if parse_quantity(requests[resource]) > parse_quantity(limits[resource]):
                    problems.append(f"{where}: {base}.resources.requests.{resource}: "
                                    f"{requests[resource]!r} is above the limit "
                                    f"{limits[resource]!r}")
            except ValueError:
                pass  # reported above
    return problems


def _cross_check(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """References between documents: Service → pods, HPA → Deployment, PDB → pods."""
    problems: list[str] = []
    deployments = {(d.get("metadata", {}).get("namespace"), d["metadata"].get("name")): d
                   for _, d in docs if d.get("kind") == "Deployment"}
    if not deployments:
        return problems

    def pods_of(ns: Any, selector: Any) -> list[dict[str, Any]]:
        return [d for (d_ns, _), d in deployments.items()
                if d_ns == ns and _matches(selector, _pod_template(d)[0])]

    hpa_floor: dict[Any, int] = {}
    for where, doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        ns = doc.get("metadata", {}).get("namespace")
        if kind == "Service":
            targets = pods_of(ns, spec.get("selector"))
            if not targets:
                problems.append(f"{where}: spec.selector: {spec.get('selector')!r} selects no "
                                "Deployment's pods in this file")
            for i, port in enumerate(spec.get("ports") or []):
                target = port.get("targetPort")
                if isinstance(target, str) and targets and not any(
                        target == p.get("name")
                        for d in targets for c in _pod_template(d)[1].get("containers") or []
                        for p in c.get("ports") or []):
                    problems.append(f"{where}: spec.ports[{i}].targetPort: no container port is "
                                    f"named {target!r}")
        elif kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            target = deployments.get((ns, ref.get("name")))
            if ref.get("kind") != "Deployment" or target is None:
                problems.append(f"{where}: spec.scaleTargetRef: {ref.get('kind')}/"
                                f"{ref.get('name')} is not a Deployment in this file")
                continue
            if (spec.get("minReplicas") or 1) > (spec.get("maxReplicas") or 0):
                problems.append(f"{where}: spec.minReplicas: {spec.get('minReplicas')} is above "
                                f"maxReplicas {spec.get('maxReplicas')}")
            hpa_floor[(ns, ref.get("name"))] = spec.get("minReplicas") or 1
            uses_cpu = any((m.get("resource") or {}).get("name") == "cpu"
                           for m in spec.get("metrics") or [])
            for c in _pod_template(target)[1].get("containers") or []:
                if uses_cpu and "cpu" not in ((c.get("resources") or {}).get("requests") or {}):
                    problems.append(f"{where}: spec.metrics: CPU utilization needs a cpu request "
                                    f"on container {c.get('name')!r} of {_ref(target)}")
    for where, doc in docs:
        if doc.get("kind") != "PodDisruptionBudget":
            continue
        spec, ns = doc.get("spec") or {}, doc.get("metadata", {}).get("namespace")
        selector = (spec.get("selector") or {}).get("matchLabels")
        targets = pods_of(ns, selector)
        if not targets:
            problems.append(f"{where}: spec.selector.matchLabels: {selector!r} selects no "
                            "Deployment's pods in this file")
        minimum = spec.get("minAvailable")
        for target in targets:
            key = (ns, target["metadata"].get("name"))
            floor = hpa_floor.get(key, target["spec"].get("replicas", 1))
            if isinstance(minimum, int) and minimum >= floor:
                problems.append(f"{where}: spec.minAvailable: {minimum} with as few as {floor} "
                                f"replica(s) of {_ref(target)} blocks every eviction (node "
                                "drains hang)")
    return problems


def validate_documents(docs: Iterable[Any], *, source: str = "manifests",
                       kubernetes_version: str = KUBERNETES_VERSION) -> list[str]:
    """Validate documents offline; returns their ``Kind/name``, raises :class:`ManifestError`.

    Core documents are checked with ``kubernetes_validate.validate(doc, version,
    strict=True)``; an apiVersion the version does not serve is an error (the
    kubernetes-validate CLI only warns). InferenceServices are checked as described in the
    module docstring.
    """
    kv = _kubernetes_validate()
    problems: list[str] = []
    checked: list[tuple[str, dict[str, Any]]] = []
    refs: list[str] = []
    for number, doc in enumerate(docs, 1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"document {number}: expected a mapping, got {type(doc).__name__}")
            continue
        ref = _ref(doc)
        where = f"document {number} ({ref})"
        if not isinstance(doc.get("kind"), str) or not isinstance(doc.get("apiVersion"), str):
            problems.append(f"{where}: apiVersion and kind are required")
            continue
        if doc["kind"] == "InferenceService":
            found = _check_inference_service(kv, doc, kubernetes_version, where)
        else:
            found = _schema_check(kv, doc, kubernetes_version, [], where)
            if not found and doc["kind"] == "Deployment":
                found = _check_workload(doc, where)
        found += _check_metadata(doc, where)
        problems += found
        if not found:
            checked.append((where, doc))
        refs.append(ref)
    problems += _cross_check(checked)
    if problems:
        raise ManifestError(source, problems)
    return refs


def _load_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DeployError(f"manifest file not found: {path}") from None
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DeployError(f"{path}: not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or exc}") from None


def validate_manifests(path: str | Path, *,
                       kubernetes_version: str = KUBERNETES_VERSION) -> list[str]:
    """Validate a manifest file, or every ``*.yaml``/``*.yml`` in a folder, offline.

    Returns the ``Kind/name`` of every document; raises :class:`ManifestError` (a
    :class:`DeployError`) whose message names the file, the document's kind and name, and
    the field, e.g. ``document 1 (Deployment/churn-classifier): spec.replicas: expected
    integer, got str '2'``.
    """
    path = Path(path)
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    if not files:
        raise DeployError(f"{path}: no *.yaml manifests in this folder")
    refs: list[str] = []
    for file in files:
        refs += validate_documents(_load_documents(file), source=str(file),
                                   kubernetes_version=kubernetes_version)
    return refs


# -- render ------------------------------------------------------------------------------
def render(out_dir: str | Path, settings: KubernetesSettings | None = None, /, *,
           validate: bool = True, **fields: Any) -> dict[str, Any]:
    """Write the Dockerfile, .dockerignore, kubernetes.yaml and inferenceservice.yaml.

    Pass a :class:`KubernetesSettings`, or its fields as keywords (``model_name``,
    ``model_version``, ``image``, ``model_uri``, ``namespace``, ``replicas``, ...), or both
    (the keywords replace the settings' fields). With ``validate`` (the default) every
    document is validated before anything is written. Returns a JSON-ready summary for the
    run manifest: folder, files, image, model URI, resource names, the commands that build
    and apply it, and warnings.
    """
    s = settings_from(settings, **fields)
    manifests = build_manifests(s)
    isvc = inference_service(s)
    validated = (validate_documents([*manifests, isvc], source="rendered manifests",
                                    kubernetes_version=s.kubernetes_version)
                 if validate else [])

    from mlfolio.config import project_dir

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# {s.model_name} version {s.model_version} ({s.model_uri}), written by "
              "mlfolio.deploy.kubernetes.\n")
    files = {
        DOCKERFILE: dockerfile(s),
        **{name: dockerignore() for name in DOCKERIGNORE_FILES},
        MANIFESTS_FILE: _dump_yaml(manifests, header + f"# kubectl apply -f {MANIFESTS_FILE}\n"),
        INFERENCE_SERVICE_FILE: _dump_yaml([isvc], header + "# KServe alternative to "
                                           f"{MANIFESTS_FILE} (needs KServe installed): "
                                           f"kubectl apply -f {INFERENCE_SERVICE_FILE}\n"),
    }
    for name, text in files.items():
        (out / name).write_text(text)
    for warning in s.warnings:
        log.warning("kubernetes target: %s", warning)

    notes = []
    if _replica_floor(s) < 2:
        notes.append("no PodDisruptionBudget: with a single replica, minAvailable 1 would "
                     "block every node drain")
    if s.token_secret is not None:
        notes.append(f"/metrics needs the bearer token from Secret {s.token_secret!r}: give "
                     "the Prometheus scrape job an authorization credential")
    return {
        "target": "kubernetes",
        "out_dir": str(out),
        "files": list(files),
        "image": s.image,
        "model_name": s.model_name,
        "model_version": s.model_version,
        "model_uri": s.model_uri,
        "namespace": s.namespace,
        "tracking_uri": s.tracking_uri,
        "resources": {doc["kind"]: doc["metadata"]["name"] for doc in [*manifests, isvc]},
        "kubernetes_version": s.kubernetes_version,
        "validated": validated,
        "commands": {
            "build": f"docker build -f {out / DOCKERFILE} -t {s.image} {project_dir()}",
            "push": f"docker push {s.image}",
            "apply": f"kubectl apply -f {out / MANIFESTS_FILE}",
            "apply_kserve": f"kubectl apply -f {out / INFERENCE_SERVICE_FILE}",
        },
        "warnings": list(s.warnings),
        "notes": notes,
    }
