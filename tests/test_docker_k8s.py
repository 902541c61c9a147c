"""Static checks of the Kubernetes manifests in docker/k8s (distributed mode).

Each resource is validated against the Kubernetes OpenAPI schemas shipped inside the
kubernetes-validate package (offline, strict: unknown fields are errors) when it is
installed, and always structurally: labels and selectors agree, every container has
resources and probes, every referenced PVC, ConfigMap and Service exists, the HPA targets a
Deployment, NetworkPolicies restrict the API, and no secret value is written down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "docker" / "k8s"
# oldest still-common and newest release covered by the bundled schemas
K8S_VERSIONS = ("1.30.0", "1.37.0")
WORKLOADS = {"Deployment", "StatefulSet"}
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|API_KEY|_AUTH)", re.IGNORECASE)


def _load() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = _load()
RESOURCES = [(f, d) for f, d in DOCS if d.get("kind") != "Kustomization"]


def _ids(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in items]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in RESOURCES if d["kind"] == kind}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in RESOURCES if d["kind"] in WORKLOADS]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def test_kustomization_lists_every_manifest_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "coderag"


@pytest.mark.parametrize(("fname", "doc"), RESOURCES, ids=_ids(RESOURCES))
def test_resource_has_api_version_kind_and_metadata(fname: str, doc: dict[str, Any]) -> None:
    assert doc.get("apiVersion") and doc.get("kind"), fname
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "coderag"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (dev extra)"
    )
    errors = []
    for fname, doc in RESOURCES:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{fname} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert errors == []


def test_schema_validation_catches_mistakes() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (dev extra)"
    )
    deployment = yaml.safe_load(yaml.safe_dump(by_kind("Deployment")["coderag-api"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # typo
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("doc", workloads(), ids=lambda d: d["metadata"]["name"])
def test_selector_matches_template_labels(doc: dict[str, Any]) -> None:
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(doc["spec"]["selector"], labels)


@pytest.mark.parametrize("doc", workloads(), ids=lambda d: d["metadata"]["name"])
def test_containers_have_resources_probes_and_run_as_non_root(doc: dict[str, Any]) -> None:
    spec = pod_spec(doc)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in spec["containers"]:
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(
            res["limits"]
        ), c["name"]
        assert c.get("livenessProbe") and c.get("readinessProbe"), c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        image = c["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), image


@pytest.mark.parametrize("doc", workloads(), ids=lambda d: d["metadata"]["name"])
def test_probe_ports_are_declared(doc: dict[str, Any]) -> None:
    for c in pod_spec(doc)["containers"]:
        names = {p["name"] for p in c.get("ports", [])}
        numbers = {p["containerPort"] for p in c.get("ports", [])}
        for key in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(key) or {}
            if "httpGet" in probe:
                port = probe["httpGet"]["port"]
                assert port in names or port in numbers, f"{c['name']} {key} port {port}"


def test_referenced_pvcs_configmaps_and_secrets() -> None:
    pvcs = set(by_kind("PersistentVolumeClaim"))
    configmaps = set(by_kind("ConfigMap"))
    for doc in workloads():
        spec = pod_spec(doc)
        templates = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, mount["name"]
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in configmaps
        for vol in volumes.values():
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in pvcs


def test_repo_mirrors_live_on_a_shared_volume() -> None:
    pvc = by_kind("PersistentVolumeClaim")["coderag-mirrors"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    worker = pod_spec(by_kind("Deployment")["coderag-worker"])
    mounts = {m["mountPath"]: m["name"] for m in worker["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["volumes"]}
    claim = volumes[mounts["/data/mirrors"]]["persistentVolumeClaim"]["claimName"]
    assert claim == "coderag-mirrors"


def test_no_secret_values_only_secret_references() -> None:
    assert "Secret" not in {d["kind"] for _, d in RESOURCES}, "Secrets are created out of band"
    for doc in workloads():
        for c in pod_spec(doc)["containers"]:
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]
                value = env.get("value", "")
                for cred in re.findall(r"//([^@/\s]*)@", value):
                    assert re.fullmatch(r":?\$\([A-Z_]+\)", cred), f"{env['name']}: {value}"
    for name, cm in by_kind("ConfigMap").items():
        for key in cm.get("data", {}):
            assert not SECRET_NAME.search(key), f"ConfigMap {name} holds secret {key}"
    text = "\n".join(p.read_text(encoding="utf-8").lower() for p in K8S.glob("*.yaml"))
    assert "changeme" not in text


def test_hpa_targets_the_api_deployment() -> None:
    hpas = by_kind("HorizontalPodAutoscaler")
    assert hpas, "no HorizontalPodAutoscaler"
    deployments = by_kind("Deployment")
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"coderag-api"}


def test_services_select_existing_pods() -> None:
    templates = [d["spec"]["template"]["metadata"]["labels"] for d in workloads()]
    for name, svc in by_kind("Service").items():
        selector = {"matchLabels": svc["spec"]["selector"]}
        assert any(selector_matches(selector, labels) for labels in templates), name


def test_api_worker_and_gpu_worker_commands() -> None:
    deployments = by_kind("Deployment")
    api = pod_spec(deployments["coderag-api"])["containers"][0]
    assert api["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    cpu = pod_spec(deployments["coderag-worker"])["containers"][0]
    assert cpu["args"][:3] == ["worker", "--queues", "git,index"]
    gpu_spec = pod_spec(deployments["coderag-worker-gpu"])
    gpu = gpu_spec["containers"][0]
    assert gpu["args"] == ["worker", "--queues", "embed", "--pool", "solo"]
    assert gpu["image"].split(":")[0] == "coderag-gpu"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_spec["tolerations"])
    env = {e["name"]: e.get("value") for e in gpu["env"]}
    assert env["CODERAG_EMBEDDING_DEVICE"] == "cuda"


def test_qdrant_is_a_replicated_cluster() -> None:
    sts = by_kind("StatefulSet")["qdrant"]
    assert sts["spec"]["replicas"] == 3
    headless = by_kind("Service")[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert 6335 in {p["port"] for p in headless["spec"]["ports"]}
    container = pod_spec(sts)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    script = container["args"][0]
    assert "--bootstrap" in script and "qdrant-0.qdrant-headless:6335" in script
    assert {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]} >= {
        "storage",
        "snapshots",
    }
    assert "qdrant" in by_kind("PodDisruptionBudget")


def test_redis_persists_with_append_only_file() -> None:
    sts = by_kind("StatefulSet")["redis"]
    args = pod_spec(sts)["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert sts["spec"]["volumeClaimTemplates"]


def test_network_policy_lets_only_gateway_and_ide_reach_the_api() -> None:
    policies = by_kind("NetworkPolicy")
    deny = [p for p in policies.values() if p["spec"]["podSelector"] == {}]
    assert deny and "ingress" not in deny[0]["spec"], "no default-deny ingress policy"
    api_labels = by_kind("Deployment")["coderag-api"]["spec"]["template"]["metadata"]["labels"]
    api_policies = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] and selector_matches(p["spec"]["podSelector"], api_labels)
    ]
    assert len(api_policies) == 1
    pod_peers = set()
    for rule in api_policies[0]["spec"]["ingress"]:
        for peer in rule["from"]:
            if "podSelector" in peer:
                for expr in peer["podSelector"].get("matchExpressions", []):
                    pod_peers |= set(expr["values"])
                pod_peers |= set(peer["podSelector"].get("matchLabels", {}).values())
        assert {p["port"] for p in rule["ports"]} == {8080}
    assert pod_peers == {"litellm", "code-server"}
    # the stores accept only coderag's own pods
    for store in ("qdrant", "redis"):
        labels = by_kind("StatefulSet")[store]["spec"]["template"]["metadata"]["labels"]
        assert any(
            p["spec"]["podSelector"] and selector_matches(p["spec"]["podSelector"], labels)
            for p in policies.values()
        ), store


def test_configmap_builds_valid_settings_and_every_queue_has_a_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigMap plus (real-looking) secrets is a valid coderag configuration, and every
    queue it routes work to is consumed by a worker Deployment."""
    import json
    import os

    from coderag.settings import Settings

    for key in list(os.environ):
        if key.startswith("CODERAG_"):
            monkeypatch.delenv(key)
    for key, value in by_kind("ConfigMap")["coderag-config"]["data"].items():
        monkeypatch.setenv(key, value)
    secret = "k8s-secret-0123456789abcdef"
    monkeypatch.setenv("CODERAG_API_TOKENS", json.dumps({secret: ["*"]}))
    monkeypatch.setenv("CODERAG_GITLAB_TOKEN", secret)
    monkeypatch.setenv("CODERAG_QDRANT_API_KEY", secret)
    monkeypatch.setenv("CODERAG_CELERY_BROKER_URL", f"redis://:{secret}@redis:6379/0")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.resolved_backend == "server" and settings.distributed
    assert settings.public_url
    consumed: set[str] = set()
    for doc in workloads():
        args = pod_spec(doc)["containers"][0].get("args", [])
        if args[:1] == ["worker"]:
            consumed |= set(args[args.index("--queues") + 1].split(","))
    assert {"git", "index", settings.full_index_queue} <= consumed
