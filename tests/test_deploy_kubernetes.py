"""The kubernetes target: rendered manifests pass the Kubernetes schemas (strict), broken ones
fail naming the document and field, and the Dockerfile's commands really run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlfolio.deploy import DeployError
from mlfolio.deploy import kubernetes as k8s

from .conftest import ROOT, require_module
from .servers import register_models, start_server, stop_server

BASE = {
    "model_name": "churn-classifier",
    "model_version": "3",
    "image": "registry.example.com/ml/mlfolio-serve:0.1.0",
    "tracking_uri": "http://mlflow.mlops.svc:5000",
}


def settings(**changes: Any) -> k8s.KubernetesSettings:
    return k8s.KubernetesSettings.from_mapping({**BASE, **changes})


@pytest.fixture
def kv():
    return require_module("kubernetes_validate", "the manifests are checked against the schemas")


@pytest.fixture
def rendered(tmp_path, kv) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "deploy"
    return k8s.render(out, **BASE), out


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


# -- render and validate ----------------------------------------------------------------
def test_render_writes_every_file_and_a_json_summary(rendered):
    summary, out = rendered
    names = [
        "Dockerfile",
        ".dockerignore",
        "Dockerfile.dockerignore",
        "kubernetes.yaml",
        "inferenceservice.yaml",
    ]
    assert summary["files"] == names
    assert all((out / name).is_file() for name in names)
    assert json.loads(json.dumps(summary)) == summary  # goes into deploy.json as is
    assert summary["out_dir"] == str(out.resolve())
    assert summary["image"] == BASE["image"]
    assert summary["model_uri"] == "models:/churn-classifier/3"  # pinned by default
    assert summary["resources"] == {
        "Deployment": "churn-classifier",
        "Service": "churn-classifier",
        "HorizontalPodAutoscaler": "churn-classifier",
        "PodDisruptionBudget": "churn-classifier",
        "InferenceService": "churn-classifier",
    }
    assert summary["validated"] == [f"{kind}/churn-classifier" for kind in summary["resources"]]
    assert summary["warnings"] == [] and summary["notes"] == []
    assert summary["commands"]["apply"] == f"kubectl apply -f {out.resolve()}/kubernetes.yaml"
    assert summary["commands"]["build"].startswith(
        f"docker build -f {out.resolve()}/Dockerfile -t {BASE['image']} "
    )


def test_kubernetes_yaml_is_one_multi_document_file_for_kubectl(rendered):
    _, out = rendered
    text = (out / "kubernetes.yaml").read_text()
    assert text.startswith("# churn-classifier version 3")
    assert text.count("\n---\n") == 4
    assert "&id0" not in text and "*id0" not in text  # no YAML anchors or aliases
    docs = load_docs(out / "kubernetes.yaml")
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"default"}


def test_every_core_document_passes_strict_schema_validation(rendered, kv):
    _, out = rendered
    for doc in load_docs(out / "kubernetes.yaml"):
        assert kv.validate(doc, "1.30.0", strict=True) == "1.30"
    assert k8s.validate_manifests(out / "kubernetes.yaml") == [
        "Deployment/churn-classifier",
        "Service/churn-classifier",
        "HorizontalPodAutoscaler/churn-classifier",
        "PodDisruptionBudget/churn-classifier",
    ]
    # a folder: every manifest in it, the InferenceService too
    assert "InferenceService/churn-classifier" in k8s.validate_manifests(out)


def test_deployment_spec(rendered):
    _, out = rendered
    docs = by_kind(load_docs(out / "kubernetes.yaml"))
    dep = docs["Deployment"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "churn-classifier"
    assert labels["mlfolio/model-name"] == "churn-classifier"
    assert labels["mlfolio/model-version"] == "3"
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "churn-classifier"}
    assert "replicas" not in dep["spec"]  # the HPA owns the count
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == k8s.USER_ID
    (container,) = pod["containers"]
    assert container["image"] == BASE["image"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {
        "MODEL_URI": "models:/churn-classifier/3",
        "MLFLOW_TRACKING_URI": BASE["tracking_uri"],
        "PORT": "8080",
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"

    svc, hpa, pdb = docs["Service"], docs["HorizontalPodAutoscaler"], docs["PodDisruptionBudget"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "churn-classifier",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert pdb["spec"] == {"minAvailable": 1, "selector": dep["spec"]["selector"]}


def test_inference_service_runs_the_same_container_over_protocol_v2(rendered):
    _, out = rendered
    (isvc,) = load_docs(out / "inferenceservice.yaml")
    dep = by_kind(load_docs(out / "kubernetes.yaml"))["Deployment"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == "churn-classifier"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    (container,) = predictor["containers"]
    (core,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == core["image"]
    assert container["resources"] == core["resources"]
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROTOCOL"] == "v2"
    assert env["MODEL_URI"] == "models:/churn-classifier/3"
    assert env["MLFLOW_TRACKING_URI"] == BASE["tracking_uri"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert k8s.validate_manifests(out / "inferenceservice.yaml") == [
        "InferenceService/churn-classifier"
    ]


def test_render_is_deterministic(tmp_path, kv):
    k8s.render(tmp_path / "a", **BASE)
    k8s.render(tmp_path / "b", **BASE)
    for name in ("Dockerfile", "kubernetes.yaml", "inferenceservice.yaml"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_settings_object_and_keyword_overrides(tmp_path, kv):
    summary = k8s.render(tmp_path, settings(), model_version=4, namespace="ml-serving")
    assert summary["model_uri"] == "models:/churn-classifier/4"  # the default followed
    assert summary["namespace"] == "ml-serving"
    docs = load_docs(tmp_path / "kubernetes.yaml")
    assert {d["metadata"]["namespace"] for d in docs} == {"ml-serving"}


# -- deliberately broken documents --------------------------------------------------------
def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(leaf) if leaf.isdigit() else leaf] = value


BROKEN = [
    pytest.param(
        "Deployment",
        "spec.template.spec.containers.0.resourcez",
        {},
        "document 1 (Deployment/churn-classifier): "
        "spec.template.spec.containers[0].resourcez: unknown field 'resourcez'",
        id="unknown-field",
    ),
    pytest.param(
        "HorizontalPodAutoscaler",
        "spec.minReplicas",
        "two",
        "document 3 (HorizontalPodAutoscaler/churn-classifier): spec.minReplicas: "
        "expected integer, got str 'two'",
        id="wrong-type",
    ),
    pytest.param(
        "Service",
        "spec.ports.0.port",
        "80",
        "(Service/churn-classifier): spec.ports[0].port: expected integer",
        id="quoted-number",
    ),
    pytest.param(
        "Deployment",
        "spec.template.spec.containers.0.image",
        None,
        "spec.template.spec.containers[0].image: required field is missing",
        id="null-image",
    ),
    pytest.param(
        "Deployment",
        "spec.template.spec.containers.0.name",
        None,
        "spec.template.spec.containers[0].name: required field is missing",
        id="null-required",
    ),
    pytest.param(
        "HorizontalPodAutoscaler",
        "apiVersion",
        "autoscaling/v2beta2",
        "(HorizontalPodAutoscaler/churn-classifier): no Kubernetes 1.30 schema for "
        "apiVersion 'autoscaling/v2beta2'",
        id="removed-api-version",
    ),
    pytest.param(
        "PodDisruptionBudget",
        "spec.minAvailable",
        [1],
        "(PodDisruptionBudget/churn-classifier): spec.minAvailable",
        id="wrong-shape",
    ),
    pytest.param(
        "Deployment",
        "spec.selector.matchLabels",
        {"app.kubernetes.io/name": "other"},
        "(Deployment/churn-classifier): spec.selector.matchLabels: {'app.kubernetes.io/"
        "name': 'other'} does not match spec.template.metadata.labels",
        id="selector-mismatch",
    ),
    pytest.param(
        "Deployment",
        "spec.template.spec.containers.0.readinessProbe.httpGet.port",
        "web",
        "containers[0].readinessProbe.httpGet.port: no container port is named 'web'",
        id="probe-port-name",
    ),
    pytest.param(
        "Deployment",
        "spec.template.spec.containers.0.resources.requests.memory",
        "2Gi",
        "resources.requests.memory: '2Gi' is above the limit '1Gi'",
        id="request-above-limit",
    ),
    pytest.param(
        "Deployment",
        "spec.template.spec.containers.0.resources.limits.cpu",
        "1 core",
        "resources.limits.cpu: '1 core' is not a Kubernetes quantity",
        id="quantity",
    ),
    pytest.param(
        "Service",
        "metadata.name",
        "Churn_Classifier",
        "(Service/Churn_Classifier): metadata.name: 'Churn_Classifier' is not a DNS-1035 label",
        id="bad-name",
    ),
    pytest.param(
        "Deployment",
        "metadata.labels.mlfolio/model-name",
        "Breast Cancer",
        "metadata.labels[\"mlfolio/model-name\"]: 'Breast Cancer' is not a valid label value",
        id="bad-label-value",
    ),
    pytest.param(
        "Service",
        "spec.selector",
        {"app.kubernetes.io/name": "nobody"},
        "(Service/churn-classifier): spec.selector: {'app.kubernetes.io/name': "
        "'nobody'} selects no Deployment's pods",
        id="service-selects-nothing",
    ),
    pytest.param(
        "HorizontalPodAutoscaler",
        "spec.scaleTargetRef.name",
        "churn",
        "spec.scaleTargetRef: Deployment/churn is not a Deployment in this file",
        id="hpa-target-missing",
    ),
]


@pytest.mark.parametrize(("kind", "path", "value", "expected"), BROKEN)
def test_broken_document_fails_naming_kind_and_field(rendered, kind, path, value, expected):
    _, out = rendered
    docs = load_docs(out / "kubernetes.yaml")
    _set(by_kind(docs)[kind], path, value)
    broken = out / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    with pytest.raises(k8s.ManifestError) as info:
        k8s.validate_manifests(broken)
    message = str(info.value)
    assert message.startswith(f"{broken}: ")
    assert expected in message, message
    assert isinstance(info.value, DeployError)


def test_all_problems_are_reported_at_once(rendered):
    _, out = rendered
    docs = load_docs(out / "kubernetes.yaml")
    kinds = by_kind(docs)
    kinds["Deployment"]["spec"]["paused"] = "yes"
    kinds["Service"]["spec"]["typo"] = 1
    with pytest.raises(k8s.ManifestError) as info:
        k8s.validate_documents(docs, source="edited")
    assert len(info.value.problems) == 2
    assert "Deployment/churn-classifier): spec.paused: expected boolean" in str(info.value)
    assert "Service/churn-classifier): spec.typo: unknown field" in str(info.value)


def test_pdb_that_blocks_every_drain_is_refused(rendered):
    _, out = rendered
    docs = load_docs(out / "kubernetes.yaml")
    by_kind(docs)["HorizontalPodAutoscaler"]["spec"]["minReplicas"] = 1
    with pytest.raises(
        k8s.ManifestError,
        match=r"spec.minAvailable: 1 with as few as 1 "
        r"replica\(s\) of Deployment/churn-classifier",
    ):
        k8s.validate_documents(docs)


ISVC_BROKEN = [
    pytest.param(
        "spec.predictor.containers.0.portz",
        [],
        "(InferenceService/churn-classifier): "
        "spec.predictor.containers[0].portz: unknown field 'portz'",
        id="unknown-field",
    ),
    pytest.param(
        "spec.predictor.containers.0.env",
        [{"name": "MODEL_URI", "value": "m"}],
        "spec.predictor.containers[0].env: PROTOCOL must be v1 or v2",
        id="no-protocol",
    ),
    pytest.param(
        "spec.predictor.containers.0.name",
        "server",
        "spec.predictor.containers[0].name: KServe serves from the container named "
        "'kserve-container'",
        id="container-name",
    ),
    pytest.param(
        "spec.predictor.minReplicas",
        "2",
        "spec.predictor.minReplicas: expected int, got str '2'",
        id="wrong-type",
    ),
    pytest.param(
        "spec.predictor.model",
        {"modelFormat": {"name": "sklearn"}},
        "spec.predictor.model: a custom predictor (containers) cannot also set 'model'",
        id="framework-and-containers",
    ),
    pytest.param(
        "spec.predictor.volumes.0.emptyDir",
        "yes",
        "spec.predictor.volumes[0].emptyDir",
        id="pod-spec-type",
    ),
    pytest.param(
        "apiVersion",
        "serving.kserve.io/v1alpha1",
        "apiVersion: expected 'serving.kserve.io/v1beta1'",
        id="api-version",
    ),
    pytest.param(
        "metadata.name",
        "2-churn",
        "(InferenceService/2-churn): metadata.name: '2-churn' is not a DNS-1035 label",
        id="name-starts-with-digit",
    ),
]


@pytest.mark.parametrize(("path", "value", "expected"), ISVC_BROKEN)
def test_broken_inference_service_fails_naming_the_field(rendered, path, value, expected):
    _, out = rendered
    (isvc,) = load_docs(out / "inferenceservice.yaml")
    _set(isvc, path, value)
    with pytest.raises(k8s.ManifestError) as info:
        k8s.validate_documents([isvc], source="inferenceservice.yaml")
    assert expected in str(info.value), str(info.value)


def test_unparsable_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x\n")
    with pytest.raises(DeployError, match=r"bad.yaml: not valid YAML \(line \d+\)"):
        k8s.validate_manifests(path)


def test_missing_kubernetes_validate_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kubernetes_validate", None)  # import fails
    with pytest.raises(DeployError, match="kubernetes-validate is not installed"):
        k8s.render(tmp_path, **BASE)
    assert not list(tmp_path.iterdir())  # nothing written before validation
    assert k8s.render(tmp_path, validate=False, **BASE)["validated"] == []


# -- the Dockerfile -------------------------------------------------------------------------
def _instruction_args(text: str, instruction: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{instruction} ")]
    return line.removeprefix(f"{instruction} ")


def test_dockerfile_content():
    text = k8s.dockerfile(settings())
    lines = text.splitlines()
    assert "FROM python:3.11-slim" in lines
    assert "COPY pyproject.toml constraints.txt README.md ./" in lines
    assert "RUN pip install --no-cache-dir -c constraints.txt . \\" in lines
    assert "USER 10001:10001" in lines
    assert "EXPOSE 8080" in lines
    assert "HEALTHCHECK --interval=30s" in text and "/ping" in _healthcheck_argv(text)[2]
    entrypoint = json.loads(_instruction_args(text, "ENTRYPOINT"))
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    assert entrypoint[2].startswith('exec mlfolio serve --model "${MODEL_URI:?')
    assert "--host 0.0.0.0" in entrypoint[2]
    assert "EXPOSE 9000" in k8s.dockerfile(settings(port=9000)).splitlines()


def test_dockerfile_parses_in_order_with_the_buildkit_parser():
    dockerfile = require_module("dockerfile", "BuildKit's parser (from PyPI) reads the Dockerfile")
    commands = dockerfile.parse_string(k8s.dockerfile(settings()))
    order = [c.cmd for c in commands]
    assert order[0] == "FROM" and order.count("FROM") == 1
    assert commands[0].value == ("python:3.11-slim",)

    def index(cmd: str, contains: str = "") -> int:
        return next(
            i for i, c in enumerate(commands) if c.cmd == cmd and contains in " ".join(c.value)
        )

    copy_constraints = index("COPY", "constraints.txt")
    pip = index("RUN", "pip install")
    user = index("USER")
    assert copy_constraints < index("COPY", "lib") < pip < user
    assert "pip install --no-cache-dir -c constraints.txt ." in commands[pip].value[0]
    assert "RUN" not in order[user:]  # nothing runs as root after USER
    assert commands[user].value == ("10001:10001",)
    assert commands[index("EXPOSE")].value == ("8080",)
    health = commands[index("HEALTHCHECK")]
    assert health.value[:3] == ("CMD", "python", "-c") and "/ping" in health.value[3]
    assert "--start-period=120s" in health.flags
    entry = commands[index("ENTRYPOINT")]
    assert entry.json and entry.value[:2] == ("/bin/sh", "-c")
    assert "mlfolio serve" in entry.value[2] and "--host 0.0.0.0" in entry.value[2]
    assert order[-2:] == ["ENTRYPOINT", "CMD"]


def test_build_context_files_exist_and_pass_the_dockerignore():
    text = k8s.dockerfile(settings())
    sources = [
        part
        for line in text.splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    ]
    assert sources == ["pyproject.toml", "constraints.txt", "README.md", "lib"]
    patterns = k8s.dockerignore().splitlines()
    assert "*" in patterns  # an allow-list
    for source in sources:
        assert (ROOT / source).exists(), source
        assert f"!{source}" in patterns, source
    # `pip install .` reads the readme pyproject names: it must be in the context
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources


def _fake_mlfolio(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlfolio"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf \'%s\\0\' "$a"; done\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_entrypoint_runs_mlfolio_serve_with_the_model_uri(tmp_path):
    """The ENTRYPOINT, run by a real /bin/sh, gives `mlfolio serve` arguments its parser takes."""
    from mlfolio.cli import _parser

    entrypoint = json.loads(_instruction_args(k8s.dockerfile(settings()), "ENTRYPOINT"))
    env = {
        **_fake_mlfolio(tmp_path),
        "MODEL_URI": "models:/Breast_Cancer v2@champion",
        "PORT": "8080",
    }
    done = subprocess.run([*entrypoint, "--verbose"], env=env, capture_output=True, timeout=10)
    assert done.returncode == 0, done.stderr
    argv = done.stdout.decode().split("\0")[:-1]
    args = _parser().parse_args(argv)
    assert args.command == "serve"
    assert args.model == "models:/Breast_Cancer v2@champion"  # the space survived
    assert (args.host, args.port, args.verbose) == ("0.0.0.0", 8080, True)

    del env["MODEL_URI"]
    done = subprocess.run(entrypoint, env=env, capture_output=True, timeout=10)
    assert done.returncode != 0
    assert b"set MODEL_URI" in done.stderr


def _healthcheck_argv(text: str) -> list[str]:
    (line,) = [ln.strip() for ln in text.splitlines() if ln.strip().startswith('CMD ["python')]
    return json.loads(line.removeprefix("CMD "))


class _PingHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/ping" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_healthcheck_command_passes_on_ping_and_fails_otherwise():
    argv = _healthcheck_argv(k8s.dockerfile(settings()))
    assert argv[0] == "python"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {**os.environ, "PORT": str(server.server_address[1])}
    try:
        ok = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        _PingHandler.status = 503
        sick = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=10)
        assert sick.returncode == 1
    finally:
        _PingHandler.status = 200
        server.shutdown()
        server.server_close()


# -- routes the manifests rely on --------------------------------------------------------------
def _status(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_a_served_model_answers_the_probes_and_scrapes_the_manifests_name(tmp_path, monkeypatch):
    """``mlfolio serve`` started as the pod starts it, its token from the variable the
    Deployment fills from the Secret: each probe path answers 200 without a token (the
    kubelet sends none), the scrape path refuses a request without the token and answers
    one with it, and the Dockerfile's HEALTHCHECK passes against it."""
    s = settings(token_secret="churn-serve-token")
    pod = k8s.deployment(s)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    probes = {
        container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    scrape = pod["metadata"]["annotations"]["prometheus.io/path"]
    (token_var,) = [e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    monkeypatch.setenv(token_var, "s3cret-pod-token")
    server = start_server(register_models(tmp_path))
    try:
        assert {path: _status(server.url + path) for path in probes} == dict.fromkeys(probes, 200)
        assert _status(server.url + scrape) == 401
        assert _status(server.url + scrape, token="s3cret-pod-token") == 200
        argv = _healthcheck_argv(k8s.dockerfile(s))
        port = server.url.rsplit(":", 1)[1]
        check = subprocess.run(
            [sys.executable, *argv[1:]],
            env={**os.environ, "PORT": port},
            capture_output=True,
            timeout=10,
        )
        assert check.returncode == 0, check.stderr
    finally:
        stop_server(server.proc)


def test_token_comes_from_a_secret_under_the_servers_variable(tmp_path, kv):
    summary = k8s.render(tmp_path, token_secret="churn-serve-token", **BASE)
    dep = by_kind(load_docs(tmp_path / "kubernetes.yaml"))["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    token = next(e for e in container["env"] if e["name"] == "MLFOLIO_SERVE_TOKEN")
    assert token == {
        "name": "MLFOLIO_SERVE_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "churn-serve-token", "key": "token"}},
    }
    assert "churn-serve-token" not in (tmp_path / "Dockerfile").read_text()
    assert any("/metrics needs the bearer token" in note for note in summary["notes"])


# -- names and settings ----------------------------------------------------------------------
def test_settings_carry_the_parameter_files_section_and_take_its_defaults():
    """deploy.kubernetes (config.KubernetesTargetConfig) declares its fields once: every one
    reaches the settings, and the settings' defaults for them are the section's."""
    from mlfolio.config import KubernetesTargetConfig

    section = KubernetesTargetConfig(
        image="registry.example.com/ml/serve:2",
        namespace="ml",
        replicas=3,
        min_replicas=3,
        max_replicas=9,
        tracking_uri="http://mlflow.ml.svc:5000",
    )
    s = k8s.KubernetesSettings.from_config(section, model_name="churn", model_version="4")
    assert {name: getattr(s, name) for name in KubernetesTargetConfig.model_fields} == (
        section.model_dump()
    )
    assert s.model_uri == "models:/churn/4"
    defaults = KubernetesTargetConfig()
    bare = settings()
    for name in set(KubernetesTargetConfig.model_fields) - set(BASE):
        assert getattr(bare, name) == getattr(defaults, name), name
    with pytest.raises(DeployError, match="model_version: expected a registry version"):
        k8s.KubernetesSettings.from_config(section, model_name="churn", model_version="v4")


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("churn-classifier", "churn-classifier"),
        ("Breast_Cancer v2", "breast-cancer-v2"),
        ("  Überweisung  Modell ", "uberweisung-modell"),
        ("2024 churn", "model-2024-churn"),
        ("churn..classifier--", "churn-classifier"),
    ],
)
def test_dns_name(model_name, expected):
    assert k8s.dns_name(model_name) == expected


def test_long_names_are_cut_with_a_hash_and_stay_distinct():
    a = k8s.dns_name("customer-lifetime-value-regression-model-for-emea-region-v1")
    b = k8s.dns_name("customer-lifetime-value-regression-model-for-emea-region-v2")
    assert a != b
    assert len(a) == len(b) == k8s.MAX_NAME_LENGTH
    assert a.startswith("customer-lifetime-value-regression")


@pytest.mark.parametrize("model_name", ["___", "模型", "---"])
def test_impossible_names_fail_clearly(model_name):
    with pytest.raises(DeployError, match=r"model_name .*: no Kubernetes name can be made"):
        settings(model_name=model_name, model_uri=None)


def test_sanitized_names_render_valid_manifests(tmp_path, kv):
    summary = k8s.render(tmp_path, **{**BASE, "model_name": "Breast_Cancer v2"})
    assert set(summary["resources"].values()) == {"breast-cancer-v2"}
    assert summary["model_uri"] == "models:/Breast_Cancer v2/3"
    labels = by_kind(load_docs(tmp_path / "kubernetes.yaml"))["Deployment"]["metadata"]["labels"]
    assert labels["mlfolio/model-name"] == "Breast_Cancer-v2"
    assert k8s.validate_manifests(tmp_path)


def test_label_value():
    assert k8s.label_value("Breast_Cancer v2", field="model_name") == "Breast_Cancer-v2"
    long = k8s.label_value("x" * 100, field="model_name")
    assert len(long) <= 63 and long[-1].isalnum()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("250m", Decimal("0.25")),
        ("1", Decimal(1)),
        ("0.5", Decimal("0.5")),
        ("512Mi", Decimal(512 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("1e3", Decimal(1000)),
        ("1E", Decimal(10**18)),
        (2, Decimal(2)),
    ],
)
def test_parse_quantity(text, value):
    assert k8s.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["1 GB", "1gb", "abc", "", "1.2.3", "Mi"])
def test_parse_quantity_refuses(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        k8s.parse_quantity(text)


BAD_SETTINGS = [
    ({"replicas": 0, "autoscale": False}, "replicas: must be between 1 and 1000, got 0"),
    ({"min_replicas": 5, "max_replicas": 3}, "min_replicas: 5 is above max_replicas 3"),
    ({"replicas": 9}, "replicas: 9 is outside min_replicas..max_replicas (2..6)"),
    ({"max_replicas": "6"}, "max_replicas: expected an integer, got '6'"),
    ({"autoscale": "yes"}, "autoscale: expected true or false, got 'yes'"),
    ({"port": 80}, "port: must be between 1024 and 65535, got 80 (a non-root user"),
    ({"target_cpu_utilization": 0}, "target_cpu_utilization: must be between 1 and 100"),
    ({"cpu_request": "1 GB"}, "cpu_request: '1 GB' is not a Kubernetes quantity"),
    ({"cpu_request": "2"}, "cpu_request: '2' is above cpu_limit '1'"),
    ({"memory_request": "512m"}, "memory_request: '512m' is only 0.512 bytes; did you mean 512Mi?"),
    ({"memory_limit": "0"}, "memory_limit: must be above zero"),
    ({"namespace": "ML_Serving"}, "namespace: 'ML_Serving' is not a valid namespace"),
    ({"name": "Churn"}, "name: 'Churn' must be a DNS-1035 label"),
    (
        {"image": "Registry/Team/Model:1"},
        "image: 'Registry/Team/Model:1' is not an image reference",
    ),
    ({"image": "mlfolio serve:1"}, "image: 'mlfolio serve:1' is not an image reference"),
    ({"model_version": "v2"}, "model_version: expected a registry version number"),
    ({"model_version": None}, "model_version: expected a non-empty string, got None"),
    (
        {"model_uri": "runs:/abc/model"},
        "model_uri: 'runs:/abc/model' must be models:/<name>@<alias>",
    ),
    (
        {"model_uri": "models:/other@champion"},
        "names model 'other', not model_name 'churn-classifier'",
    ),
    ({"model_uri": "models:/churn-classifier/2"}, "pins version 2, not model_version '3'"),
    (
        {"tracking_uri": "postgresql://mlflow:s3cret@db:5432/mlflow"},
        "tracking_uri: has a password in it",
    ),
    ({"token_secret": "Serve Token"}, "token_secret: 'Serve Token' is not a valid Secret name"),
    ({"kubernetes_version": "latest"}, "kubernetes_version: expected e.g. '1.30.0'"),
]


@pytest.mark.parametrize(("changes", "expected"), BAD_SETTINGS)
def test_bad_settings_raise_naming_the_field(changes, expected):
    with pytest.raises(DeployError) as info:
        settings(**changes)
    assert str(info.value).startswith("kubernetes target: invalid settings")
    assert expected in str(info.value), str(info.value)


def test_several_bad_settings_are_reported_together():
    with pytest.raises(DeployError) as info:
        settings(cpu_request="lots", namespace="A", max_replicas=1)
    message = str(info.value)
    assert "cpu_request:" in message and "namespace:" in message and "min_replicas:" in message


def test_unknown_and_missing_settings_are_named(tmp_path):
    with pytest.raises(DeployError, match=r"unknown setting 'replica' \(known: model_name, "):
        k8s.render(tmp_path, replica=3, **BASE)
    with pytest.raises(DeployError, match=r"missing setting 'image'"):
        k8s.KubernetesSettings.from_mapping({"model_name": "m", "model_version": "1"})


def test_settings_are_frozen():
    s = settings()
    with pytest.raises(AttributeError):
        s.replicas = 3  # type: ignore[misc]


def test_pipeline_defaults_render_with_warnings(tmp_path, kv):
    """What the deploy stage passes by default (an alias URI, `mlfolio-serve:latest`, the
    project's SQLite store) renders valid manifests, and says what will not work in a pod."""
    summary = k8s.render(
        tmp_path,
        model_name="churn-classifier",
        model_version="3",
        model_uri="models:/churn-classifier@champion",
        image="mlfolio-serve:latest",
        namespace="default",
        replicas=2,
        min_replicas=2,
        max_replicas=6,
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    assert summary["model_uri"] == "models:/churn-classifier@champion"
    assert len(summary["validated"]) == 5
    warnings = " | ".join(summary["warnings"])
    assert "image 'mlfolio-serve:latest' is not pinned" in warnings
    assert "is a local store: a pod cannot read it" in warnings
    assert k8s.validate_manifests(tmp_path / "kubernetes.yaml")


def test_localhost_tracking_uri_is_a_warning():
    s = settings(tracking_uri="http://127.0.0.1:5000")
    assert any("points at localhost" in w for w in s.warnings)
    assert settings().warnings == ()


@pytest.mark.parametrize(
    ("changes", "kinds"),
    [
        ({"autoscale": False, "replicas": 1}, ["Deployment", "Service"]),
        ({"autoscale": False, "replicas": 3}, ["Deployment", "Service", "PodDisruptionBudget"]),
        ({"min_replicas": 1, "replicas": 1}, ["Deployment", "Service", "HorizontalPodAutoscaler"]),
    ],
)
def test_replica_settings_choose_the_documents(tmp_path, kv, changes, kinds):
    summary = k8s.render(tmp_path, **{**BASE, **changes})
    docs = load_docs(tmp_path / "kubernetes.yaml")
    assert [d["kind"] for d in docs] == kinds
    dep = docs[0]
    if changes.get("autoscale") is False:
        assert dep["spec"]["replicas"] == changes["replicas"]
    else:
        assert "replicas" not in dep["spec"]
    if "PodDisruptionBudget" not in kinds:
        assert "no PodDisruptionBudget" in summary["notes"][0]


def test_without_read_only_root_filesystem_there_is_no_tmp_volume(tmp_path, kv):
    k8s.render(tmp_path, read_only_root_filesystem=False, **BASE)
    pod = load_docs(tmp_path / "kubernetes.yaml")[0]["spec"]["template"]["spec"]
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False


def test_env_from_secret(tmp_path, kv):
    k8s.render(tmp_path, **{**BASE, "tracking_uri": None, "env_from_secret": "mlflow-creds"})
    dep = load_docs(tmp_path / "kubernetes.yaml")[0]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-creds"}}]
    assert "MLFLOW_TRACKING_URI" not in {e["name"] for e in container["env"]}


def test_documents_are_plain_data():
    """build_* return fresh dicts: editing one does not leak into the next render."""
    s = settings()
    first = k8s.build_manifests(s)
    snapshot = copy.deepcopy(first)
    first[0]["spec"]["template"]["metadata"]["labels"]["x"] = "y"
    assert k8s.build_manifests(s) == snapshot
