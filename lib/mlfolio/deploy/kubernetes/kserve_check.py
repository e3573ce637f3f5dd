"""Checks of a KServe InferenceService, for which no schema ships.

Its predictor is a PodSpec plus KServe's own keys: the PodSpec part is validated as a core
Pod, the rest by hand.
"""

from __future__ import annotations

from typing import Any

from mlfolio.deploy.kubernetes.names import KSERVE_CONTAINER_NAME
from mlfolio.deploy.kubernetes.schema import _schema_check, _short

# KServe's PredictorSpec = a PodSpec (inline) + these keys (ComponentExtensionSpec) + one of
# the framework specs. Types of the keys manifests.py writes are checked; the rest only named.
_KSERVE_EXTENSION_KEYS = {
    "minReplicas": int,
    "maxReplicas": int,
    "scaleTarget": int,
    "scaleMetric": str,
    "scaleMetricType": str,
    "containerConcurrency": int,
    "timeout": int,
    "canaryTrafficPercent": int,
    "labels": dict,
    "annotations": dict,
    "logger": dict,
    "batcher": dict,
    "deploymentStrategy": dict,
    "autoScaling": dict,
    "workerSpec": dict,
    "storageUris": list,
}
_KSERVE_FRAMEWORK_KEYS = {
    "model",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
}
_KSERVE_MODES = {"Standard", "RawDeployment", "Knative", "Serverless", "ModelMesh"}


def _check_inference_service(kv: Any, doc: dict[str, Any], version: str, where: str) -> list[str]:
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
            bad(
                'metadata.annotations["serving.kserve.io/deploymentMode"]',
                f"{mode!r} is not one of {sorted(_KSERVE_MODES)}",
            )
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
                bad(
                    f"spec.predictor.{key}",
                    f"expected {expected.__name__}, got {type(value).__name__} {_short(value)}",
                )
        elif key in _KSERVE_FRAMEWORK_KEYS:
            if "containers" in predictor:
                bad(
                    f"spec.predictor.{key}",
                    f"a custom predictor (containers) cannot also set {key!r}",
                )
        else:
            pod_spec[key] = value
    low, high = predictor.get("minReplicas"), predictor.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        bad("spec.predictor.minReplicas", f"{low} is above maxReplicas {high}")
    metric = predictor.get("scaleMetric")
    if metric is not None and metric not in ("cpu", "memory", "concurrency", "rps"):
        bad("spec.predictor.scaleMetric", f"{metric!r} is not cpu, memory, concurrency or rps")

    # The PodSpec part, against the core schema of a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    problems += [
        p.replace(f"{where}: spec", f"{where}: spec.predictor", 1)
        for p in _schema_check(kv, pod, version, [], where)
    ]

    containers = predictor.get("containers")
    if not isinstance(containers, list) or not containers:
        bad("spec.predictor.containers", "a custom predictor needs one container")
        return problems
    first = containers[0]
    if not isinstance(first, dict):
        return problems
    if first.get("name") != KSERVE_CONTAINER_NAME:
        bad(
            "spec.predictor.containers[0].name",
            f"KServe serves from the container named "
            f"{KSERVE_CONTAINER_NAME!r}, got {first.get('name')!r}",
        )
    if not first.get("image"):
        bad("spec.predictor.containers[0].image", "required field is missing")
    env = {e.get("name"): e.get("value") for e in first.get("env") or [] if isinstance(e, dict)}
    if env.get("PROTOCOL") not in ("v1", "v2"):
        bad(
            "spec.predictor.containers[0].env",
            "PROTOCOL must be v1 or v2 (KServe's protocol "
            f"switch for custom predictors), got {env.get('PROTOCOL')!r}",
        )
    if "MODEL_URI" not in env:
        bad(
            "spec.predictor.containers[0].env",
            "MODEL_URI is missing: the server would not know which model to load",
        )
    ports = first.get("ports")
    if not isinstance(ports, list) or not any(
        isinstance(p, dict) and "containerPort" in p for p in ports
    ):
        bad("spec.predictor.containers[0].ports", "expected the server's containerPort")
    return problems
