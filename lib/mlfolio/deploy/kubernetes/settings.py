"""The kubernetes target's settings: one model's deployment, validated at construction."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from mlfolio.config import KubernetesTargetConfig
from mlfolio.deploy import DeployError
from mlfolio.deploy.kubernetes.names import (
    _DNS1035_LABEL,
    _DNS1123_LABEL,
    _DNS1123_SUBDOMAIN,
    _IMAGE,
    _LOCAL_HOSTS,
    _MODEL_URI,
    KUBERNETES_VERSION,
    LABEL_PREFIX,
    MAX_NAME_LENGTH,
    MIN_MEMORY_BYTES,
    dns_name,
    label_value,
    parse_quantity,
)

# The fields a parameter file sets (deploy.kubernetes) are declared once, with their
# defaults and descriptions, in config.KubernetesTargetConfig: here they take its defaults,
# and from_config carries a section over whole.
_SECTION = KubernetesTargetConfig()


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
    namespace: str = _SECTION.namespace
    tracking_uri: str | None = _SECTION.tracking_uri
    port: int = 8080
    autoscale: bool = True
    replicas: int = _SECTION.replicas
    min_replicas: int = _SECTION.min_replicas
    max_replicas: int = _SECTION.max_replicas
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
            raise DeployError(
                f"kubernetes target: unknown setting{'s' if len(unknown) > 1 else ''}"
                f" {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
            )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init and f.name not in values and f.default is dataclasses.MISSING
        ]
        if missing:
            raise DeployError(
                f"kubernetes target: missing setting{'s' if len(missing) > 1 else ''}"
                f" {', '.join(map(repr, missing))}"
            )
        return cls(**values)

    @classmethod
    def from_config(cls, section: KubernetesTargetConfig, **fields: Any) -> KubernetesSettings:
        """Settings from the parameter file's ``deploy.kubernetes`` section, every field of
        it, with ``fields`` (model name, version, URI...) added or replacing its values."""
        return cls.from_mapping({**section.model_dump(), **fields})

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
        for name in (
            "model_name",
            "model_version",
            "image",
            "namespace",
            "cpu_request",
            "cpu_limit",
            "memory_request",
            "memory_limit",
            "kubernetes_version",
        ):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                problems.append(f"{name}: expected a non-empty string, got {getattr(self, name)!r}")
        for name in ("model_uri", "name", "tracking_uri", "token_secret", "env_from_secret"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                problems.append(f"{name}: expected a non-empty string or None, got {value!r}")
        for name in ("autoscale", "read_only_root_filesystem"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: expected true or false, got {getattr(self, name)!r}")
        bounds = {
            "port": (1024, 65535),
            "replicas": (1, 1000),
            "min_replicas": (1, 1000),
            "max_replicas": (1, 1000),
            "target_cpu_utilization": (1, 100),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name}: expected an integer, got {value!r}")
            elif not low <= value <= high:
                why = " (a non-root user cannot bind below 1024)" if name == "port" else ""
                problems.append(f"{name}: must be between {low} and {high}, got {value}{why}")
        if problems:  # the checks below rely on the types
            raise DeployError(
                "kubernetes target: invalid settings\n" + "\n".join(f"  {p}" for p in problems)
            )

        # names
        if not re.fullmatch(r"\d+", self.model_version):
            problems.append(
                f"model_version: expected a registry version number such as '3', "
                f"got {self.model_version!r}"
            )
        resource_name = self.name
        if resource_name is None:
            try:
                resource_name = dns_name(self.model_name)
            except DeployError as exc:
                problems.append(str(exc))
        elif not _DNS1035_LABEL.fullmatch(resource_name) or len(resource_name) > MAX_NAME_LENGTH:
            problems.append(
                f"name: {resource_name!r} must be a DNS-1035 label of at most "
                f"{MAX_NAME_LENGTH} characters: lowercase letters, digits and '-', "
                "starting with a letter (e.g. 'churn-classifier')"
            )
        set_(self, "resource_name", resource_name or "")
        if not re.fullmatch(r"\d+\.\d+(\.\d+)?", self.kubernetes_version):
            problems.append(
                f"kubernetes_version: expected e.g. '1.30.0', got {self.kubernetes_version!r}"
            )
        if not _DNS1123_LABEL.fullmatch(self.namespace) or len(self.namespace) > 63:
            problems.append(
                f"namespace: {self.namespace!r} is not a valid namespace (lowercase "
                "letters, digits and '-', at most 63 characters)"
            )
        for name in ("token_secret", "env_from_secret"):
            value = getattr(self, name)
            if value is not None and (not _DNS1123_SUBDOMAIN.fullmatch(value) or len(value) > 253):
                problems.append(
                    f"{name}: {value!r} is not a valid Secret name (lowercase "
                    "letters, digits, '-' and '.')"
                )
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
                problems.append(
                    f"model_uri: {self.model_uri!r} must be models:/<name>@<alias> "
                    "or models:/<name>/<version> (what `mlfolio serve` loads)"
                )
            elif match["name"] != self.model_name:
                problems.append(
                    f"model_uri: {self.model_uri!r} names model {match['name']!r}, "
                    f"not model_name {self.model_name!r}"
                )
            elif match["version"] and match["version"] != self.model_version:
                problems.append(
                    f"model_uri: {self.model_uri!r} pins version {match['version']}, "
                    f"not model_version {self.model_version!r}"
                )

        # image
        image = _IMAGE.fullmatch(self.image)
        if image is None:
            problems.append(
                f"image: {self.image!r} is not an image reference such as "
                "registry.example.com/team/mlfolio-serve:0.1.0 (lowercase "
                "repository, optional :tag and @sha256:digest)"
            )
        elif not image["digest"] and image["tag"] in (None, "latest"):
            warnings.append(
                f"image {self.image!r} is not pinned (no tag, or :latest): a "
                "rollout cannot be reproduced and re-applying the same manifest "
                "will not roll the pods; push a version tag or a digest"
            )

        # tracking URI
        if self.tracking_uri is None:
            if self.env_from_secret is None:
                warnings.append(
                    "no tracking_uri: the pods need MLFLOW_TRACKING_URI (set "
                    "tracking_uri, or put it in the env_from_secret Secret), or "
                    "the server falls back to a SQLite file inside the container"
                )
        else:
            try:
                parts = urlsplit(self.tracking_uri)
                host = (parts.hostname or "").lower()
            except ValueError as exc:
                problems.append(f"tracking_uri: {self.tracking_uri!r} is not a URI ({exc})")
                parts, host = urlsplit(""), ""
            if parts.password:
                problems.append(
                    "tracking_uri: has a password in it; it would be written into "
                    "the manifests. Put the URI in a Secret and name it in "
                    "env_from_secret"
                )
            scheme = parts.scheme.lower()
            if not scheme or len(scheme) == 1 or scheme in ("file", "sqlite"):
                warnings.append(
                    f"tracking_uri {self.tracking_uri!r} is a local store: a pod "
                    "cannot read it. Use the tracking server's URL (http(s)://...) "
                    "or a database the cluster can reach"
                )
            elif host in _LOCAL_HOSTS:
                warnings.append(
                    f"tracking_uri {self.tracking_uri!r} points at localhost, which "
                    "inside a pod is the pod itself; use an address the cluster "
                    "can reach"
                )

        # replicas
        if self.min_replicas > self.max_replicas:
            problems.append(
                f"min_replicas: {self.min_replicas} is above max_replicas {self.max_replicas}"
            )
        elif self.autoscale and not self.min_replicas <= self.replicas <= self.max_replicas:
            problems.append(
                f"replicas: {self.replicas} is outside min_replicas..max_replicas "
                f"({self.min_replicas}..{self.max_replicas}); with autoscale the "
                "HPA owns the count"
            )

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
                problems.append(
                    f"{kind}_request: {getattr(self, f'{kind}_request')!r} is above "
                    f"{kind}_limit {getattr(self, f'{kind}_limit')!r} (Kubernetes "
                    "refuses a request above its limit)"
                )
        if problems:
            raise DeployError(
                "kubernetes target: invalid settings\n" + "\n".join(f"  {p}" for p in problems)
            )
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
        return {
            f"{LABEL_PREFIX}model-name": self.model_name,
            f"{LABEL_PREFIX}model-uri": str(self.model_uri),
        }


def settings_from(
    settings: KubernetesSettings | None = None, /, **fields: Any
) -> KubernetesSettings:
    """``settings`` with ``fields`` replaced, or new settings from ``fields``."""
    if settings is None:
        return KubernetesSettings.from_mapping(fields)
    init = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.init}
    pinned = f"models:/{settings.model_name}/{settings.model_version}"
    if settings.model_uri == pinned and "model_uri" not in fields:
        init["model_uri"] = None  # the default follows a new model_name/model_version
    return KubernetesSettings.from_mapping({**init, **fields})
