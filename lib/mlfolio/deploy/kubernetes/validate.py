"""Offline validation of manifests: schemas, then what the API server checks beyond them.

Name and label formats, selectors that match the pod template, named ports, quantities and
requests above limits, an HPA or PDB pointing at nothing; :func:`validate_manifests` reads
the YAML files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlfolio.deploy import DeployError
from mlfolio.deploy.kubernetes.kserve_check import _check_inference_service
from mlfolio.deploy.kubernetes.monitoring import check_monitoring_resource, check_service_monitors
from mlfolio.deploy.kubernetes.names import (
    _DNS1035_LABEL,
    _DNS1123_LABEL,
    _DNS1123_SUBDOMAIN,
    _LABEL_VALUE,
    _PORT_NAME,
    KUBERNETES_VERSION,
    parse_quantity,
)
from mlfolio.deploy.kubernetes.schema import _dotted, _kubernetes_validate, _schema_check
from mlfolio.errors import ManifestError


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
            problems.append(
                f"{where}: metadata.name: {name!r} is not a DNS-1035 label "
                "(lowercase letters, digits, '-', starting with a letter, 63 max)"
            )
    elif not _DNS1123_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        problems.append(
            f"{where}: metadata.name: {name!r} is not a DNS-1123 subdomain "
            "(lowercase letters, digits, '-' and '.')"
        )
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or not _DNS1123_LABEL.fullmatch(namespace)
    ):
        problems.append(f"{where}: metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for path, labels in _all_labels(doc):
        for key, value in labels.items():
            prefix, _, local = str(key).rpartition("/")
            if (
                (prefix and (not _DNS1123_SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253))
                or not local
                or len(local) > 63
                or not _LABEL_VALUE.fullmatch(local)
            ):
                problems.append(f"{where}: {_dotted(path)}: {key!r} is not a valid label key")
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                problems.append(
                    f"{where}: {_dotted([*path, key])}: {value!r} is not a valid "
                    "label value (63 characters of letters, digits, '-', '_', '.', "
                    "alphanumeric at both ends)"
                )
    return problems


def _all_labels(doc: dict[str, Any]) -> list[tuple[list[Any], dict[str, Any]]]:
    found = []
    for path in (
        ["metadata", "labels"],
        ["spec", "template", "metadata", "labels"],
        ["spec", "selector", "matchLabels"],
        ["spec", "predictor", "labels"],
    ):
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
    return (
        isinstance(selector, dict)
        and bool(selector)
        and all(labels.get(k) == v for k, v in selector.items())
    )


def _check_workload(doc: dict[str, Any], where: str) -> list[str]:
    """What the API server checks in a Deployment beyond its schema."""
    problems: list[str] = []
    labels, pod = _pod_template(doc)
    selector = doc["spec"].get("selector", {}).get("matchLabels")
    if not _matches(selector, labels):
        problems.append(
            f"{where}: spec.selector.matchLabels: {selector!r} does not match "
            f"spec.template.metadata.labels"
        )
    for i, container in enumerate(pod.get("containers") or []):
        base = f"spec.template.spec.containers[{i}]"
        if not container.get("image"):
            problems.append(f"{where}: {base}.image: required field is missing")
        ports = {p.get("name") for p in container.get("ports") or [] if p.get("name")}
        for port_name in ports:
            if (
                len(port_name) > 15
                or not _PORT_NAME.fullmatch(port_name)
                or "--" in port_name
                or not re.search("[a-z]", port_name)
            ):
                problems.append(
                    f"{where}: {base}.ports: name {port_name!r} is not a valid "
                    "port name (15 characters max, lowercase letters, digits, '-')"
                )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = (container.get(probe) or {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(
                    f"{where}: {base}.{probe}.httpGet.port: no container port is named {port!r}"
                )
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
                    problems.append(
                        f"{where}: {base}.resources.requests.{resource}: "
                        f"{requests[resource]!r} is above the limit "
                        f"{limits[resource]!r}"
                    )
            except ValueError:
                pass  # reported above
    return problems


def _cross_check(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """References between documents: Service → pods, HPA → Deployment, PDB → pods."""
    problems: list[str] = []
    deployments = {
        (d.get("metadata", {}).get("namespace"), d["metadata"].get("name")): d
        for _, d in docs
        if d.get("kind") == "Deployment"
    }
    if not deployments:
        return problems

    def pods_of(ns: Any, selector: Any) -> list[dict[str, Any]]:
        return [
            d
            for (d_ns, _), d in deployments.items()
            if d_ns == ns and _matches(selector, _pod_template(d)[0])
        ]

    hpa_floor: dict[Any, int] = {}
    for where, doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        ns = doc.get("metadata", {}).get("namespace")
        if kind == "Service":
            targets = pods_of(ns, spec.get("selector"))
            if not targets:
                problems.append(
                    f"{where}: spec.selector: {spec.get('selector')!r} selects no "
                    "Deployment's pods in this file"
                )
            for i, port in enumerate(spec.get("ports") or []):
                target = port.get("targetPort")
                if (
                    isinstance(target, str)
                    and targets
                    and not any(
                        target == p.get("name")
                        for d in targets
                        for c in _pod_template(d)[1].get("containers") or []
                        for p in c.get("ports") or []
                    )
                ):
                    problems.append(
                        f"{where}: spec.ports[{i}].targetPort: no container port is "
                        f"named {target!r}"
                    )
        elif kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            target = deployments.get((ns, ref.get("name")))
            if ref.get("kind") != "Deployment" or target is None:
                problems.append(
                    f"{where}: spec.scaleTargetRef: {ref.get('kind')}/"
                    f"{ref.get('name')} is not a Deployment in this file"
                )
                continue
            if (spec.get("minReplicas") or 1) > (spec.get("maxReplicas") or 0):
                problems.append(
                    f"{where}: spec.minReplicas: {spec.get('minReplicas')} is above "
                    f"maxReplicas {spec.get('maxReplicas')}"
                )
            hpa_floor[(ns, ref.get("name"))] = spec.get("minReplicas") or 1
            uses_cpu = any(
                (m.get("resource") or {}).get("name") == "cpu" for m in spec.get("metrics") or []
            )
            for c in _pod_template(target)[1].get("containers") or []:
                if uses_cpu and "cpu" not in ((c.get("resources") or {}).get("requests") or {}):
                    problems.append(
                        f"{where}: spec.metrics: CPU utilization needs a cpu request "
                        f"on container {c.get('name')!r} of {_ref(target)}"
                    )
    for where, doc in docs:
        if doc.get("kind") != "PodDisruptionBudget":
            continue
        spec, ns = doc.get("spec") or {}, doc.get("metadata", {}).get("namespace")
        selector = (spec.get("selector") or {}).get("matchLabels")
        targets = pods_of(ns, selector)
        if not targets:
            problems.append(
                f"{where}: spec.selector.matchLabels: {selector!r} selects no "
                "Deployment's pods in this file"
            )
        minimum = spec.get("minAvailable")
        for target in targets:
            key = (ns, target["metadata"].get("name"))
            floor = hpa_floor.get(key, target["spec"].get("replicas", 1))
            if isinstance(minimum, int) and minimum >= floor:
                problems.append(
                    f"{where}: spec.minAvailable: {minimum} with as few as {floor} "
                    f"replica(s) of {_ref(target)} blocks every eviction (node "
                    "drains hang)"
                )
    return problems


def validate_documents(
    docs: Iterable[Any], *, source: str = "manifests", kubernetes_version: str = KUBERNETES_VERSION
) -> list[str]:
    """Validate documents offline; returns their ``Kind/name``, raises :class:`ManifestError`.

    Core documents are checked with ``kubernetes_validate.validate(doc, version,
    strict=True)``; an apiVersion the version does not serve is an error (the
    kubernetes-validate CLI only warns). InferenceServices are checked as described in the
    package docstring.
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
        elif doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            found = check_monitoring_resource(doc, where)
        else:
            found = _schema_check(kv, doc, kubernetes_version, [], where)
            if not found and doc["kind"] == "Deployment":
                found = _check_workload(doc, where)
        found += _check_metadata(doc, where)
        problems += found
        if not found:
            checked.append((where, doc))
        refs.append(ref)
    problems += _cross_check(checked) + check_service_monitors(checked)
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
        raise DeployError(
            f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
        ) from None


def validate_manifests(
    path: str | Path, *, kubernetes_version: str = KUBERNETES_VERSION
) -> list[str]:
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
        refs += validate_documents(
            _load_documents(file), source=str(file), kubernetes_version=kubernetes_version
        )
    return refs
