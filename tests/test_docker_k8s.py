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
from urllib.parse import urlsplit

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
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, vol["name"]


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


# --- identity: Keycloak --------------------------------------------------------------------------

REALM_FILE = REPO / "docker" / "keycloak" / "coderag-realm.json"


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _keycloak() -> dict[str, Any]:
    return pod_spec(by_kind("Deployment")["keycloak"])["containers"][0]


def test_keycloak_realm_configmap_is_the_realm_file() -> None:
    import json

    data = by_kind("ConfigMap")["keycloak-realm"]["data"]
    realm = json.loads(REALM_FILE.read_text(encoding="utf-8"))
    assert set(data) == {f"{realm['realm']}-realm.json"}
    assert json.loads(data[f"{realm['realm']}-realm.json"]) == realm


def test_keycloak_imports_the_realm_and_is_probed_on_the_management_port() -> None:
    # Keycloak: --import-realm reads /opt/keycloak/data/import ("Importing and exporting
    # realms"); /health/{started,live,ready} on the management port 9000 when health-enabled
    # ("Tracking instance status with health checks": Kubernetes HTTP probes).
    spec = pod_spec(by_kind("Deployment")["keycloak"])
    kc = spec["containers"][0]
    assert kc["args"] == ["start", "--import-realm"]
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    assert kc["image"] == compose["services"]["keycloak"]["image"]
    ports = {p["name"]: p["containerPort"] for p in kc["ports"]}
    assert ports == {"http": 8080, "management": 9000}
    assert _env(kc)["KC_HEALTH_ENABLED"]["value"] == "true"
    for probe, path in (
        ("startupProbe", "/health/started"),
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
    ):
        assert kc[probe]["httpGet"] == {"path": path, "port": "management"}, probe
    mount = next(m for m in kc["volumeMounts"] if m["mountPath"] == "/opt/keycloak/data/import")
    assert mount.get("readOnly") is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "keycloak-realm"


def test_keycloak_runs_one_node_behind_the_ingress_on_its_database() -> None:
    deployment = by_kind("Deployment")["keycloak"]
    env = _env(_keycloak())
    # a local cache is only consistent for one node, never two side by side
    assert env["KC_CACHE"]["value"] == "local"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert env["KC_HOSTNAME"]["value"].startswith("https://")
    assert env["KC_HTTP_ENABLED"]["value"] == "true"
    assert env["KC_PROXY_HEADERS"]["value"] == "xforwarded"
    assert env["KC_DB"]["value"] == "postgres"
    db = env["KC_DB_URL_HOST"]["value"]
    assert db in by_kind("Service") and db in by_kind("StatefulSet")
    postgres = pod_spec(by_kind("StatefulSet")[db])["containers"][0]
    pg_env = _env(postgres)
    assert env["KC_DB_USERNAME"]["value"] == pg_env["POSTGRES_USER"]["value"]
    assert env["KC_DB_URL_DATABASE"]["value"] == pg_env["POSTGRES_DB"]["value"]
    assert (
        env["KC_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
        == pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    )
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    assert postgres["image"] == compose["services"]["keycloak-db"]["image"]
    # PGDATA below the mount point, the mount on a claim of its own
    mount = postgres["volumeMounts"][0]
    assert pg_env["PGDATA"]["value"].startswith(mount["mountPath"] + "/")
    templates = by_kind("StatefulSet")[db]["spec"]["volumeClaimTemplates"]
    assert mount["name"] in {t["metadata"]["name"] for t in templates}


def test_the_api_oidc_settings_name_the_keycloak_realm(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import os

    from coderag.settings import Settings

    realm = json.loads(REALM_FILE.read_text(encoding="utf-8"))
    oidc = by_kind("ConfigMap")["coderag-oidc"]["data"]
    hostname = _env(_keycloak())["KC_HOSTNAME"]["value"]
    assert oidc["CODERAG_OIDC_ISSUER"] == f"{hostname}/realms/{realm['realm']}"
    jwks = urlsplit(oidc["CODERAG_OIDC_JWKS_URL"])
    service = by_kind("Service")[jwks.hostname]
    assert jwks.port in {p["port"] for p in service["spec"]["ports"]}
    assert selector_matches(
        {"matchLabels": service["spec"]["selector"]},
        by_kind("Deployment")["keycloak"]["spec"]["template"]["metadata"]["labels"],
    )
    assert jwks.path == f"/realms/{realm['realm']}/protocol/openid-connect/certs"
    # with the shared ConfigMap and the API's secrets: a valid coderag configuration
    for key in list(os.environ):
        if key.startswith("CODERAG_"):
            monkeypatch.delenv(key)
    for cm in ("coderag-config", "coderag-oidc"):
        for key, value in by_kind("ConfigMap")[cm]["data"].items():
            monkeypatch.setenv(key, value)
    secret = "k8s-secret-0123456789abcdef"
    monkeypatch.setenv("CODERAG_GITLAB_TOKEN", secret)
    monkeypatch.setenv("CODERAG_QDRANT_API_KEY", secret)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.oidc_issuer == oidc["CODERAG_OIDC_ISSUER"]
    assert settings.oidc_audience == ["coderag"]
    assert settings.oidc_audience[0] in {c["clientId"] for c in realm["clients"]}


def _config_maps_loaded(name: str) -> set[str]:
    return {
        source["configMapRef"]["name"]
        for c in pod_spec(by_kind("Deployment")[name])["containers"]
        for source in c.get("envFrom", [])
        if "configMapRef" in source
    }


def test_no_worker_loads_the_oidc_settings() -> None:
    # The workers verify no tokens, and CODERAG_OIDC_ISSUER makes Settings require a GitLab
    # token that the GPU worker does not have.
    for name in ("coderag-worker", "coderag-worker-gpu"):
        assert "coderag-oidc" not in _config_maps_loaded(name), name


def test_the_api_loads_the_oidc_settings() -> None:
    assert "coderag-oidc" in _config_maps_loaded("coderag-api")


def _container_env(name: str, secrets: dict[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the first container of Deployment `name`: its
    envFrom ConfigMaps, then `env` (secretKeyRef from `secrets`, $(VAR) expanded)."""
    container = pod_spec(by_kind("Deployment")[name])["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(by_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                item["value"],
            )
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "coderag-secrets", item["name"]
        if ref["key"] in secrets:
            env[item["name"]] = secrets[ref["key"]]
        else:
            assert ref.get("optional"), f"{name}: secret key {ref['key']} is required"
    return env


def test_the_api_environment_builds_settings_with_delegation_and_oidc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API Deployment's environment, with the secret keys of kustomization.yaml, is a
    valid coderag configuration: service tokens, the gateway's delegation token, Keycloak,
    and the GitLab URL and token that per-user access reads permissions with."""
    import json
    import os

    from coderag.settings import Settings

    gateway = "k8s-gateway-delegation-0123456789"
    secrets = {
        "CODERAG_QDRANT_API_KEY": "k8s-qdrant-0123456789abcdef",
        "CODERAG_GITLAB_TOKEN": "glpat-k8s-0123456789abcdef",
        "CODERAG_API_TOKENS": json.dumps({"k8s-operator-0123456789abcdef": ["*"]}),
        "CODERAG_DELEGATION_TOKENS": json.dumps([gateway]),
        "REDIS_PASSWORD": "k8sredis0123456789abcdef",
    }
    env = _container_env("coderag-api", secrets)
    assert {"CODERAG_GITLAB_URL", "CODERAG_GITLAB_TOKEN"} <= set(env)
    for key in list(os.environ):
        if key.startswith("CODERAG_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [t.get_secret_value() for t in settings.delegation_tokens] == [gateway]
    oidc = by_kind("ConfigMap")["coderag-oidc"]["data"]
    assert settings.oidc_issuer == oidc["CODERAG_OIDC_ISSUER"]
    assert settings.api_tokens == json.loads(secrets["CODERAG_API_TOKENS"])
    assert settings.gitlab_url and settings.gitlab_token
    assert settings.celery_broker_url == f"redis://:{secrets['REDIS_PASSWORD']}@redis:6379/0"


def test_every_secret_key_is_in_the_secret_creation_comment() -> None:
    """kustomization.yaml's `kubectl create secret` creates every key the manifests read."""
    comment = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    created = set(re.findall(r"--from-literal=([A-Z_]+)=", comment))
    read: set[str] = set()
    for doc in workloads():
        for c in pod_spec(doc)["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "coderag-secrets":
                    read.add(ref["key"])
    assert "CODERAG_DELEGATION_TOKENS" in read
    assert read <= created, f"not in the comment: {sorted(read - created)}"


def test_network_policy_lets_the_api_and_ide_reach_keycloak_and_only_keycloak_its_db() -> None:
    policies = by_kind("NetworkPolicy")
    labels = {
        name: by_kind(kind)[name]["spec"]["template"]["metadata"]["labels"]
        for kind, name in (
            ("Deployment", "keycloak"),
            ("StatefulSet", "keycloak-db"),
            ("Deployment", "coderag-api"),
        )
    }

    def rules(target: str) -> list[dict[str, Any]]:
        selecting = [
            p
            for p in policies.values()
            if p["spec"]["podSelector"]
            and selector_matches(p["spec"]["podSelector"], labels[target])
        ]
        assert len(selecting) == 1, target
        return selecting[0]["spec"]["ingress"]

    def admits(rule: dict[str, Any], pod: dict[str, str]) -> bool:
        return any(
            "podSelector" in peer
            and "namespaceSelector" not in peer
            and selector_matches(peer["podSelector"], pod)
            for peer in rule["from"]
        )

    keycloak = rules("keycloak")
    to_http = [r for r in keycloak if {p["port"] for p in r["ports"]} == {8080}]
    assert len(to_http) == len(keycloak), "Keycloak admits its HTTP port only"
    assert any(admits(r, labels["coderag-api"]) for r in to_http)
    assert any(admits(r, {"app.kubernetes.io/name": "code-server"}) for r in to_http)
    assert not any(admits(r, {"app.kubernetes.io/name": "coderag-worker"}) for r in to_http)
    ingress_ns = [
        peer["namespaceSelector"]
        for r in to_http
        for peer in r["from"]
        if "namespaceSelector" in peer and "podSelector" not in peer
    ]
    assert ingress_ns == [{"matchLabels": {"coderag.io/ingress": "true"}}]
    db = rules("keycloak-db")
    assert len(db) == 1 and {p["port"] for p in db[0]["ports"]} == {5432}
    assert [peer["podSelector"] for peer in db[0]["from"]] == [
        {"matchLabels": {"app.kubernetes.io/name": "keycloak"}}
    ]
