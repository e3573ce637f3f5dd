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
- with ``monitoring`` (the run's :class:`~mlfolio.config.MonitoringConfig`):
  ``servicemonitor.yaml`` and ``prometheusrule.yaml`` (Prometheus Operator: scrape the
  Service, the alert rules of :mod:`mlfolio.monitor.alerts` with the Service name as job)
  and ``grafana-dashboard.yaml`` (the dashboard as a ConfigMap labelled
  ``grafana_dashboard: "1"`` for Grafana's sidecar).
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

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfolio.deploy.kubernetes.image import (
    BUILD_CONTEXT_DIRS,
    BUILD_CONTEXT_FILES,
    DOCKERFILE,
    DOCKERIGNORE_FILES,
    ENTRYPOINT_SCRIPT,
    HEALTHCHECK_CODE,
    dockerfile,
    dockerignore,
)
from mlfolio.deploy.kubernetes.manifests import (
    INFERENCE_SERVICE_FILE,
    MANIFESTS_FILE,
    _dump_yaml,
    _replica_floor,
    build_manifests,
    deployment,
    horizontal_pod_autoscaler,
    inference_service,
    pod_disruption_budget,
    service,
)
from mlfolio.deploy.kubernetes.names import (
    BASE_IMAGE,
    CONTAINER_NAME,
    KSERVE_CONTAINER_NAME,
    KSERVE_DEPLOYMENT_MODE,
    KUBERNETES_VERSION,
    LABEL_PREFIX,
    LIVENESS_PATH,
    MAX_NAME_LENGTH,
    METRICS_PATH,
    MIN_MEMORY_BYTES,
    PORT_NAME,
    READINESS_PATH,
    TOKEN_ENV,
    TOKEN_SECRET_KEY,
    USER_ID,
    dns_name,
    label_value,
    parse_quantity,
)
from mlfolio.deploy.kubernetes.settings import KubernetesSettings, settings_from
from mlfolio.deploy.kubernetes.validate import validate_documents, validate_manifests
from mlfolio.errors import ManifestError

if TYPE_CHECKING:
    from mlfolio.config import MonitoringConfig

__all__ = [
    "BASE_IMAGE",
    "BUILD_CONTEXT_DIRS",
    "BUILD_CONTEXT_FILES",
    "CONTAINER_NAME",
    "DOCKERFILE",
    "DOCKERIGNORE_FILES",
    "ENTRYPOINT_SCRIPT",
    "HEALTHCHECK_CODE",
    "INFERENCE_SERVICE_FILE",
    "KSERVE_CONTAINER_NAME",
    "KSERVE_DEPLOYMENT_MODE",
    "KUBERNETES_VERSION",
    "LABEL_PREFIX",
    "LIVENESS_PATH",
    "MANIFESTS_FILE",
    "MAX_NAME_LENGTH",
    "METRICS_PATH",
    "MIN_MEMORY_BYTES",
    "PORT_NAME",
    "READINESS_PATH",
    "TOKEN_ENV",
    "TOKEN_SECRET_KEY",
    "USER_ID",
    "KubernetesSettings",
    "ManifestError",
    "build_manifests",
    "deployment",
    "dns_name",
    "dockerfile",
    "dockerignore",
    "horizontal_pod_autoscaler",
    "inference_service",
    "label_value",
    "parse_quantity",
    "pod_disruption_budget",
    "render",
    "service",
    "settings_from",
    "validate_documents",
    "validate_manifests",
]

log = logging.getLogger(__name__)


def render(
    out_dir: str | Path,
    settings: KubernetesSettings | None = None,
    /,
    *,
    validate: bool = True,
    monitoring: MonitoringConfig | None = None,
    **fields: Any,
) -> dict[str, Any]:
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
    watch = _monitoring_documents(s, monitoring) if monitoring is not None else {}
    validated = (
        validate_documents(
            [*manifests, isvc, *watch.values()],
            source="rendered manifests",
            kubernetes_version=s.kubernetes_version,
        )
        if validate
        else []
    )

    from mlfolio.config import project_dir

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {s.model_name} version {s.model_version} ({s.model_uri}), written by "
        "mlfolio.deploy.kubernetes.\n"
    )
    files = {
        DOCKERFILE: dockerfile(s),
        **{name: dockerignore() for name in DOCKERIGNORE_FILES},
        MANIFESTS_FILE: _dump_yaml(manifests, header + f"# kubectl apply -f {MANIFESTS_FILE}\n"),
        INFERENCE_SERVICE_FILE: _dump_yaml(
            [isvc],
            header + "# KServe alternative to "
            f"{MANIFESTS_FILE} (needs KServe installed): "
            f"kubectl apply -f {INFERENCE_SERVICE_FILE}\n",
        ),
        **{name: _dump_yaml([doc], header) for name, doc in watch.items()},
    }
    for name, text in files.items():
        (out / name).write_text(text)
    for warning in s.warnings:
        log.warning("kubernetes target: %s", warning)

    notes = []
    if _replica_floor(s) < 2:
        notes.append(
            "no PodDisruptionBudget: with a single replica, minAvailable 1 would "
            "block every node drain"
        )
    if s.token_secret is not None:
        notes.append(
            f"/metrics needs the bearer token from Secret {s.token_secret!r}: give "
            "the Prometheus scrape job an authorization credential"
        )
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
        "resources": {
            doc["kind"]: doc["metadata"]["name"] for doc in [*manifests, isvc, *watch.values()]
        },
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


def _monitoring_documents(
    s: KubernetesSettings, monitoring: MonitoringConfig
) -> dict[str, dict[str, Any]]:
    """ServiceMonitor, PrometheusRule and dashboard ConfigMap, by file name."""
    from mlfolio.deploy.kubernetes import monitoring as mon
    from mlfolio.monitor import alerts, dashboard

    board = dashboard.for_monitoring(monitoring, job=s.resource_name)
    return {
        mon.SERVICE_MONITOR_FILE: mon.service_monitor(s),
        mon.PROMETHEUS_RULE_FILE: mon.prometheus_rule(
            s, alerts.alert_rules(monitoring, job=s.resource_name)
        ),
        mon.DASHBOARD_FILE: mon.dashboard_config_map(s, dashboard.dashboard_json(board)),
    }
