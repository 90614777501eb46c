"""deploy/: every Kubernetes manifest validates (offline, strict) against the Kubernetes schemas, the KServe
resources use only fields of KServe's CRDs, and what the manifests and the Dockerfile say of ports, probes,
users and the termination grace agrees with what `mindserve serve` serves and how long its stop takes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from mindserve import _master
from mindserve._frontends.grpc.health_reflection import LIVENESS
from mindserve._supervision.worker_process import STOP_TIMEOUT_S
from mindserve.cli.config import load_config
from support.paths import REPO

pytestmark = pytest.mark.server  # starts real server processes (see tests/conftest.py)

DEPLOY = os.path.join(REPO, "deploy")
KUBERNETES_VERSION = "1.32.0"
SHUTDOWN_S = _master.DRAIN_GRACE_S + _master.DRAIN_LINGER_MAX_S + _master.LISTENER_GRACE_S + STOP_TIMEOUT_S

# The fields of KServe's CRDs (serving.kserve.io, KServe 0.21) that a manifest here may use, by kind and path;
# "Container" marks a Kubernetes container, validated as one. A key not listed is a mistake (a typo KServe's API
# server would drop or refuse).
KSERVE_FIELDS = {
    ("ServingRuntime", "spec"): {
        "affinity",
        "annotations",
        "builtInAdapter",
        "containers",
        "disabled",
        "grpcDataEndpoint",
        "grpcEndpoint",
        "hostIPC",
        "httpDataEndpoint",
        "imagePullSecrets",
        "labels",
        "multiModel",
        "nodeSelector",
        "protocolVersions",
        "replicas",
        "resourceClaims",
        "schedulerName",
        "storageHelper",
        "supportedModelFormats",
        "tolerations",
        "volumes",
        "workerSpec",
    },
    ("ServingRuntime", "spec.supportedModelFormats[]"): {"autoSelect", "name", "priority", "version"},
    ("InferenceService", "spec"): {"canary", "explainer", "predictor", "tracing", "transformer"},
    ("InferenceService", "spec.predictor"): {
        "activeDeadlineSeconds",
        "affinity",
        "annotations",
        "autoScaling",
        "batcher",
        "canaryTrafficPercent",
        "containerConcurrency",
        "containers",
        "deploymentStrategy",
        "imagePullSecrets",
        "initContainers",
        "labels",
        "logger",
        "maxReplicas",
        "minReplicas",
        "model",
        "nodeSelector",
        "priorityClassName",
        "resources",
        "scaleMetric",
        "scaleMetricType",
        "scaleTarget",
        "securityContext",
        "serviceAccountName",
        "terminationGracePeriodSeconds",
        "timeout",
        "tolerations",
        "volumes",
        "workerSpec",
    },
    ("InferenceService", "spec.predictor.model"): {
        "args",
        "command",
        "env",
        "envFrom",
        "image",
        "imagePullPolicy",
        "livenessProbe",
        "modelFormat",
        "name",
        "ports",
        "protocolVersion",
        "readinessProbe",
        "resources",
        "runtime",
        "runtimeVersion",
        "securityContext",
        "startupProbe",
        "storage",
        "storageUri",
        "volumeMounts",
        "workingDir",
    },
    ("InferenceService", "spec.predictor.model.modelFormat"): {"name", "version"},
}
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}


def documents(folder: str) -> list[tuple[str, dict]]:
    found = []
    for name in sorted(os.listdir(os.path.join(DEPLOY, folder))):
        if name.endswith(".yaml"):
            with open(os.path.join(DEPLOY, folder, name)) as f:
                found += [(f"{folder}/{name}", doc) for doc in yaml.safe_load_all(f) if doc is not None]
    return found


KUBERNETES = documents("kubernetes")
KSERVE = documents("kserve")


def by_kind(docs: list, kind: str) -> dict:
    (doc,) = [d for _, d in docs if d["kind"] == kind]
    return doc


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def served_config(container: dict):
    """What `mindserve serve` would serve with this container's environment."""
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert os.path.isabs(env["MINDSERVE_SERVABLE_DIRECTORY"])
    env["MINDSERVE_SERVABLE_DIRECTORY"] = os.path.join(REPO, "servables")  # the image's folder, here
    return load_config(environ=env, cwd=REPO)


@pytest.mark.parametrize(
    "where, doc", KUBERNETES, ids=[f"{w}:{d['kind']}/{d['metadata']['name']}" for w, d in KUBERNETES]
)
def test_every_kubernetes_manifest_is_valid(where, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kinds_a_deployment_needs_are_there():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for _, d in KUBERNETES)
    assert kinds == [
        ("Deployment", "mindserve"),
        ("HorizontalPodAutoscaler", "mindserve"),
        ("PersistentVolumeClaim", "mindserve-servables"),
        ("PodDisruptionBudget", "mindserve"),
        ("Service", "mindserve"),
        ("Service", "mindserve-headless"),
    ]


def test_probes_ports_and_scrape_annotations_match_what_mindserve_serve_serves():
    deployment = by_kind(KUBERNETES, "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    config = served_config(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": port_of(config.grpc_address),
        "http": port_of(config.rest_address),
        "metrics": port_of(config.metrics_address),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    # readiness follows the workers (""), liveness the process: names the health service keeps
    assert container["readinessProbe"]["grpc"].get("service", "") == ""
    assert container["livenessProbe"]["grpc"]["service"] == container["startupProbe"]["grpc"]["service"] == LIVENESS
    annotations = pod["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/scrape"],
        int(annotations["prometheus.io/port"]),
        annotations["prometheus.io/path"],
    ) == ("true", ports["metrics"], "/metrics")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/dev/shm", "/servables"} <= mounts
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # the Services select these pods and name the container's ports
    for _, doc in KUBERNETES:
        if doc["kind"] == "Service":
            assert doc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
            assert {p["targetPort"] for p in doc["spec"]["ports"]} <= set(ports)


def test_the_termination_grace_covers_the_drain_and_liveness_cannot_cut_it_short():
    pod = by_kind(KUBERNETES, "Deployment")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > SHUTDOWN_S  # drain, linger, listeners, workers: the longest stop mindserve takes
    liveness = pod["containers"][0]["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= grace


def test_the_autoscaler_scales_the_deployment_on_cpu_and_pending_requests():
    hpa = by_kind(KUBERNETES, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mindserve"}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "mindserve_pending_requests"


def _check_fields(kind: str, path: str, value, where: str) -> None:
    allowed = KSERVE_FIELDS.get((kind, path))
    if allowed is not None:
        assert isinstance(value, dict), f"{where}: {path} is not a mapping"
        unknown = set(value) - allowed
        assert not unknown, f"{where}: {path} has fields KServe does not know: {sorted(unknown)}"
    if isinstance(value, dict):
        for key, item in value.items():
            if path.endswith("containers[]") or key == "metadata":
                continue
            _check_fields(kind, f"{path}.{key}" if path else key, item, where)
    elif isinstance(value, list):
        for item in value:
            _check_fields(kind, f"{path}[]", item, where)


@pytest.mark.parametrize("where, doc", KSERVE, ids=[f"{w}:{d['kind']}" for w, d in KSERVE])
def test_kserve_resources_use_only_fields_of_kserve_crds(where, doc):
    assert (
        doc["apiVersion"]
        == {"ServingRuntime": "serving.kserve.io/v1alpha1", "InferenceService": "serving.kserve.io/v1beta1"}[
            doc["kind"]
        ]
    )
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    _check_fields(doc["kind"], "", doc, where)
    # containers are Kubernetes containers: validated as the containers of a pod
    for container in doc["spec"].get("containers", []):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_the_inference_service_uses_the_runtime_with_the_v2_protocol():
    runtime, service = by_kind(KSERVE, "ServingRuntime"), by_kind(KSERVE, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert set(runtime["spec"]["protocolVersions"]) <= KSERVE_PROTOCOLS
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    config = served_config(container)
    # KServe routes HTTP to the container's port (8080), and models arrive in /mnt/models
    assert [p["containerPort"] for p in container["ports"]] == [port_of(config.rest_address)] == [8080]
    assert {e["name"]: e["value"] for e in container["env"]}["MINDSERVE_SERVABLE_DIRECTORY"] == "/mnt/models"
    assert (
        container["readinessProbe"]["grpc"]["port"]
        == container["livenessProbe"]["grpc"]["port"]
        == port_of(config.grpc_address)
    )
    assert int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"]) == port_of(config.metrics_address)


# ---- the Dockerfile ----


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = f.read()
    lines, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).strip().partition(" ")
        lines.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    return lines


def test_the_dockerfile_installs_the_package_and_serves_as_a_non_root_user():
    instructions = dockerfile()
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(stages) == 2
    final = instructions[stages[-1] :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entrypoint = [json.loads(args) for op, args in final if op == "ENTRYPOINT"]
    assert entrypoint == [["mindserve", "serve"]]
    assert ("STOPSIGNAL", "SIGTERM") in final
    env: dict[str, str] = {}
    for op, args in final:
        if op == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(args)))
    config = served_config({"env": [{"name": k, "value": v} for k, v in env.items() if k.startswith("MINDSERVE_")]})
    exposed = {int(p) for op, args in final if op == "EXPOSE" for p in args.split()}
    assert exposed == {port_of(config.grpc_address), port_of(config.rest_address), port_of(config.metrics_address)}
    # what it copies exists, and the extra it installs is the package's
    for op, args in instructions:
        if op == "COPY" and "--from=" not in args:
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert os.path.exists(os.path.join(REPO, source)), source
    installs = [args for op, args in instructions if op == "RUN" and "pip wheel" in args]
    assert installs and "'.[serve]'" in installs[0]
    with open(os.path.join(REPO, "setup.py")) as f:
        assert '"serve": [' in f.read()


def _docker_daemon() -> bool:
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon on this machine: the image is not built here")
def test_the_image_builds():
    done = subprocess.run(
        ["docker", "build", "-f", "deploy/Dockerfile", "-t", "mindserve:test", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
