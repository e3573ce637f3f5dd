"""The manifests as Python dicts: Deployment, Service, HPA, PDB, InferenceService, YAML."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from mlfolio.deploy.kubernetes.names import (
    CONTAINER_NAME,
    KSERVE_CONTAINER_NAME,
    KSERVE_DEPLOYMENT_MODE,
    LABEL_PREFIX,
    LIVENESS_PATH,
    METRICS_PATH,
    PORT_NAME,
    READINESS_PATH,
    TOKEN_ENV,
    TOKEN_SECRET_KEY,
    USER_ID,
)
from mlfolio.deploy.kubernetes.settings import KubernetesSettings

MANIFESTS_FILE = "kubernetes.yaml"
INFERENCE_SERVICE_FILE = "inferenceservice.yaml"


def _env(s: KubernetesSettings, *, kserve: bool = False) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "MODEL_URI", "value": s.model_uri}]
    if s.tracking_uri is not None:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": s.tracking_uri})
    if not kserve:  # Knative reserves PORT (and sets it to the container port itself)
        env.append({"name": "PORT", "value": str(s.port)})
    if s.token_secret is not None:
        env.append(
            {
                "name": TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": s.token_secret, "key": TOKEN_SECRET_KEY}},
            }
        )
    if kserve:
        env.append({"name": "PROTOCOL", "value": "v2"})
    return env


def _probe(
    path: str, port: int | str, *, period: int, timeout: int, failures: int
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


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
    container.update(
        {
            "resources": {
                "requests": {"cpu": s.cpu_request, "memory": s.memory_request},
                "limits": {"cpu": s.cpu_limit, "memory": s.memory_limit},
            },
            # The port opens once the model is loaded; up to 5 minutes before liveness counts.
            "startupProbe": _probe(LIVENESS_PATH, probe_port, period=5, timeout=2, failures=60),
            "readinessProbe": _probe(READINESS_PATH, probe_port, period=10, timeout=2, failures=3),
            "livenessProbe": _probe(LIVENESS_PATH, probe_port, period=15, timeout=5, failures=3),
            # Endpoints are removed asynchronously: keep answering a few seconds after SIGTERM.
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": USER_ID,
                "runAsGroup": USER_ID,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": s.read_only_root_filesystem,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    )
    if s.read_only_root_filesystem:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    return container


def _pod_spec(s: KubernetesSettings, container: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "fsGroup": USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    if s.read_only_root_filesystem:
        # MLflow downloads the model's artifacts into a temporary directory.
        spec["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    return spec


def _metadata(s: KubernetesSettings, **extra: Any) -> dict[str, Any]:
    return {"name": s.resource_name, "namespace": s.namespace, "labels": s.labels, **extra}


def _pod_annotations(s: KubernetesSettings) -> dict[str, str]:
    return {
        **s.annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(s.port),
        "prometheus.io/path": METRICS_PATH,
    }


def deployment(s: KubernetesSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if not s.autoscale:
        spec["replicas"] = s.replicas
    spec.update(
        {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": s.selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": s.labels, "annotations": _pod_annotations(s)},
                "spec": {
                    **_pod_spec(s, _container(s)),
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": s.selector},
                        }
                    ],
                },
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(s, annotations=s.annotations),
        "spec": spec,
    }


def service(s: KubernetesSettings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(s),
        "spec": {
            "type": "ClusterIP",
            "selector": s.selector,
            "ports": [{"name": PORT_NAME, "port": 80, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def horizontal_pod_autoscaler(s: KubernetesSettings) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(s),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": s.resource_name,
            },
            "minReplicas": s.min_replicas,
            "maxReplicas": s.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": s.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def pod_disruption_budget(s: KubernetesSettings) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(s),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": s.selector}},
    }


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
        "minReplicas": low,
        "maxReplicas": high,
        "scaleMetric": "cpu",
        "scaleTarget": s.target_cpu_utilization,
        "labels": {k: v for k, v in s.labels.items() if k.startswith(LABEL_PREFIX)},
        "annotations": _pod_annotations(s),
        **_pod_spec(s, _container(s, kserve=True)),
    }
    # Without app.kubernetes.io/name: KServe copies these labels to its pods, which the
    # Service of kubernetes.yaml would then select too, were both applied.
    labels = {k: v for k, v in s.labels.items() if k not in s.selector}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(
            s,
            labels=labels,
            annotations={
                **s.annotations,
                "serving.kserve.io/deploymentMode": KSERVE_DEPLOYMENT_MODE,
                "serving.kserve.io/autoscalerClass": "hpa",
            },
        ),
        "spec": {"predictor": predictor},
    }


def _dump_yaml(docs: Iterable[dict[str, Any]], header: str) -> str:
    body = yaml.safe_dump_all(list(docs), sort_keys=False, explicit_start=True, width=4096)
    return header + body
