"""Prometheus for real: the shipped config and alert rules through ``promtool``, the alerts'
unit tests (and that each alert has one that makes it fire and one that keeps it quiet), the
metrics the alerts and the Grafana dashboard name, and a live ``prometheus`` on loopback
scraping the real API and a real ``coderag worker`` exporter.

The binaries are Debian's ``prometheus`` package (2.42, ``bash scripts/install-system.sh``);
the compose file runs ``prom/prometheus:v3.5.0``. Nothing here relies on what changed between
them (Prometheus ``docs/migration.md``): no integer ``le`` matchers, no ``holt_winters``, no
3.x-only config or rule fields, and unit-test series are kept away from thresholds so that
3.x's left-open range selectors give the same answers as 2.x's closed ones.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.promql_names import exposed_names, grafana_exprs, metric_names
from tests.redis_support import redis_url
from tests.standin import free_port
from tests.test_worker_metrics import worker_env

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "docker" / "prometheus"
RULES = PROM_DIR / "rules" / "coderag-alerts.yml"
RULE_TESTS = PROM_DIR / "rules" / "coderag-alerts.test.yml"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "coderag.json"
MONITORING_DOC = REPO / "docs" / "INTEGRATIONS.md"
BROKER = redis_url(13)

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH: `bash scripts/install-system.sh` installs it"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus not on PATH: `bash scripts/install-system.sh` installs it",
)

SYNTHESIZED = {"up"}
"""Series Prometheus writes itself for every target, not read from any /metrics (Prometheus
docs, "Jobs and instances": https://prometheus.io/docs/concepts/jobs_instances/)."""


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    """Names the rule files define (recording rules): a panel may read them too."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def copy_prometheus_dir(tmp_path: Path) -> Path:
    """docker/prometheus as compose mounts it (config, rules/), in a scratch dir."""
    dest = tmp_path / "prometheus"
    shutil.copytree(PROM_DIR, dest)
    return dest


# --- promtool --------------------------------------------------------------------------------


@pytest.mark.integration
@needs_promtool
def test_shipped_config_passes_promtool(tmp_path: Path) -> None:
    """The config as shipped (its dns_sd_configs included: promtool checks syntax and
    semantics, it resolves nothing), with the rule file it names, resolved relative to the
    config file (prometheus/prometheus config/config.go, Config.SetDirectory)."""
    prom = copy_prometheus_dir(tmp_path)
    result = promtool("check", "config", "prometheus.yml", cwd=prom)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out
    assert f"SUCCESS: {len(alert_rules())} rules found" in out
    # and from elsewhere: rule_files is relative to the config, not to the working dir
    elsewhere = promtool("check", "config", str(prom / "prometheus.yml"), cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr


@pytest.mark.integration
@needs_promtool
def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(RULES), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.integration
@needs_promtool
def test_alert_unit_tests_pass(tmp_path: Path) -> None:
    prom = copy_prometheus_dir(tmp_path)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=prom / "rules")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.integration
@needs_promtool
def test_each_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet(
    tmp_path: Path,
) -> None:
    """Mutation check of the unit tests: with one alert's expression made never true, some
    test expecting it to fire must fail; made always true, some test expecting quiet must."""
    original = yaml.safe_load(RULES.read_text())
    names = [rule["alert"] for rule in alert_rules()]

    def run(name: str, mutate: Callable[[str], str], tag: str) -> tuple[str, str, int, str]:
        work = tmp_path / f"{tag}-{name}"
        work.mkdir()
        doc = copy.deepcopy(original)
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    rule["expr"] = mutate(rule["expr"])
        (work / RULES.name).write_text(yaml.safe_dump(doc, sort_keys=False))
        shutil.copy(RULE_TESTS, work / RULE_TESTS.name)
        result = promtool("test", "rules", RULE_TESTS.name, cwd=work)
        return name, tag, result.returncode, result.stdout + result.stderr

    jobs = [(n, lambda e: "vector(0) > 1", "never") for n in names]
    jobs += [(n, lambda e: f"({e}) or on() vector(1)", "always") for n in names]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: run(*job), jobs))
    survived = [f"{name} ({tag})" for name, tag, rc, _ in results if rc == 0]
    assert not survived, f"no unit test notices these mutated alerts: {survived}"
    for name, _, _, out in results:
        assert "FAILED" in out and name in out, out[-2000:]


def test_every_alert_is_actionable_and_documented() -> None:
    """What an on-call person needs: how long it must hold, how urgent it is, what it is, and
    where the runbook is; the runbook section names every alert."""
    doc = MONITORING_DOC.read_text()
    assert "### Alerts" in doc
    alerts_section = doc.split("### Alerts", 1)[1].split("\n#", 1)[0]
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook"] == f"docs/INTEGRATIONS.md#alerts ({name})"
        assert f"`{name}`" in alerts_section, f"{name} missing from the Alerts table"
    # the doc names no alert that does not exist
    documented = set(re.findall(r"`(Coderag[A-Za-z]+)`", alerts_section))
    assert documented == {r["alert"] for r in rules}


# --- metric names ------------------------------------------------------------------------------


def test_metric_name_scanner() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(x_bucket{a="b(c)"}[5m])))'
    ) == {"x_bucket"}
    assert metric_names(
        "a / ignoring(outcome) group_left b offset 5m > bool 1 unless c[5m:1m]"
    ) == {
        "a",
        "b",
        "c",
    }
    assert metric_names('max by (repo) (g{repo=~"$repo"}) and on() vector(1)') == {"g"}
    assert metric_names("time() - max by (repo) (ts_seconds) > 1e3") == {"ts_seconds"}
    assert metric_names("label_values(coderag_index_lag_seconds, repo)") == {
        "coderag_index_lag_seconds"
    }


def registry_names() -> set[str]:
    from coderag.metrics import generate_latest

    return exposed_names(generate_latest().decode())


def missing_names(available: set[str]) -> list[str]:
    """'where: name' for every metric an alert or a dashboard expression reads that is not
    in ``available`` (nor written by Prometheus, nor recorded by a rule)."""
    known = available | SYNTHESIZED | recorded_names()
    exprs = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    exprs += grafana_exprs(json.loads(DASHBOARD.read_text()))
    assert len(exprs) > len(alert_rules())
    return [f"{where}: {name}" for where, expr in exprs for name in metric_names(expr) - known]


def test_alerts_and_dashboard_read_only_metrics_coderag_defines() -> None:
    assert missing_names(registry_names()) == []


def test_embedding_failures_are_counted(tmp_path: Path) -> None:
    """``coderag_embedding_errors_total{kind}`` (what CoderagEmbeddingErrors reads): a call
    that returns no vectors counts once, whether the model is missing or inference fails."""
    from prometheus_client import REGISTRY

    from coderag.errors import EmbeddingError
    from embeddings import Embedder
    from embeddings.backends import LoadedModel

    def errors(kind: str) -> float:
        return REGISTRY.get_sample_value("coderag_embedding_errors_total", {"kind": kind}) or 0.0

    docs, queries = errors("documents"), errors("queries")
    missing = Embedder(model=tmp_path / "no-model", models_dir=tmp_path)
    with pytest.raises(EmbeddingError, match="does not exist"):
        missing.embed_documents(["def f(): pass"])
    assert (errors("documents"), errors("queries")) == (docs + 1, queries)
    with pytest.raises(EmbeddingError, match="does not exist"):
        missing.embed_queries(["where is f"])
    assert (errors("documents"), errors("queries")) == (docs + 1, queries + 1)

    class LostDevice:
        def encode(self, texts: Any) -> Any:
            raise RuntimeError("CUDA error: device lost")

    # Fault injection: the bundled model's tokenizer (loaded for real) with a backend that
    # fails at inference, set where warm_up would put the loaded model.
    broken = Embedder(models_dir=tmp_path)
    broken._loaded = LoadedModel(
        encoder=LostDevice(), backend="onnx", device="cpu", dim=384, max_seq_length=128
    )
    with pytest.raises(EmbeddingError, match="device lost"):
        broken.embed_documents(["def f(): pass", "def g(): pass"])
    assert errors("documents") == docs + 2
    assert broken.embed_documents([]).shape == (0, 384)  # nothing to embed is no error
    assert errors("documents") == docs + 2


# --- a live Prometheus -------------------------------------------------------------------------


def loopback_config(targets: dict[str, str], self_target: str, interval: str) -> dict[str, Any]:
    """The shipped prometheus.yml with static loopback targets in place of DNS discovery:
    the same jobs, metrics paths and rule files; jobs without a target here are dropped."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"] = {
        **cfg["global"],
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    jobs = []
    for job in cfg["scrape_configs"]:
        target = self_target if job["job_name"] == "prometheus" else targets.get(job["job_name"])
        if target is None:
            continue  # coderag-worker-gpu: only with compose's gpu profile
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        job["static_configs"] = [{"targets": [target]}]
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    assert {j["job_name"] for j in jobs} == {*targets, "prometheus"}
    return cfg


def wait_for(what: str, probe: Callable[[], Any], timeout: float, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except httpx.TransportError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})\n{tail}")


@contextmanager
def running(cmd: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, stopped with SIGTERM (SIGKILL if it lingers)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


class PromAPI:
    """The few calls of Prometheus's HTTP API the test needs (api/v1, stable in 2.x and 3.x:
    https://prometheus.io/docs/prometheus/latest/querying/api/)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=10, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **params: str) -> dict[str, Any]:
        resp = self.http.get(path, params=params)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


def scraped(url: str) -> str:
    resp = httpx.get(url, timeout=10, trust_env=False)
    assert resp.status_code == 200
    return resp.text


def sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.mark.slow
@pytest.mark.integration
@needs_prometheus
def test_live_prometheus_scrapes_the_api_and_a_worker(
    api_server: Any, tmp_path: Path, model_dir: Path
) -> None:
    broker = redis.Redis.from_url(BROKER)
    broker.flushdb()
    broker.lpush("embed", b"{}", b"{}", b"{}")  # a queue this worker does not consume
    worker_port, prom_port = free_port(), free_port()
    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    worker_cmd = [sys.executable, "-c", "from coderag.cli import main; main()", "worker"]
    worker_cmd += ["--pool", "solo", "--queues", "git,index", "--loglevel", "WARNING"]
    worker_cmd += ["--metrics-port", str(worker_port), "--metrics-host", "127.0.0.1"]
    api_target = api_server.url.removeprefix("http://")
    prom = copy_prometheus_dir(tmp_path)
    cfg = loopback_config(
        {"coderag-api": api_target, "coderag-worker": f"127.0.0.1:{worker_port}"},
        f"127.0.0.1:{prom_port}",
        interval="2s",
    )
    (prom / "prometheus.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    prom_cmd = [
        str(PROMETHEUS),
        f"--config.file={prom / 'prometheus.yml'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
    ]
    worker_log, prom_log = tmp_path / "worker.log", tmp_path / "prometheus.log"
    env = worker_env(tmp_path, model_dir, BROKER)
    try:
        with (
            running(worker_cmd, worker_log, env=env, cwd=REPO) as worker,
            running(prom_cmd, prom_log, cwd=tmp_path) as server,
            ExitStack() as stack,
        ):
            wait_for(
                "the worker's exporter",
                lambda: worker.poll() is None and scraped(worker_url),
                120,
                worker_log,
            )
            api = stack.enter_context(closing(PromAPI(f"http://127.0.0.1:{prom_port}")))
            wait_for(
                "prometheus ready",
                lambda: server.poll() is None and api.http.get("/-/ready").status_code == 200,
                60,
                prom_log,
            )

            # both targets up, scraped at the shipped metrics_path
            def targets_up() -> dict[str, str] | None:
                active = api.get("/api/v1/targets")["activeTargets"]
                up = {t["labels"]["job"]: t["scrapeUrl"] for t in active if t["health"] == "up"}
                return up if {"coderag-api", "coderag-worker", "prometheus"} <= set(up) else None

            up = wait_for("all targets up", targets_up, 60, prom_log)
            assert up["coderag-api"] == f"{api_server.url}/metrics"
            assert up["coderag-worker"] == worker_url

            # a search moves the API's latency count; Prometheus reads back the same number
            series = 'coderag_query_latency_seconds_count{job="coderag-api",endpoint="search"}'
            before = sample(
                scraped(f"{api_server.url}/metrics"),
                "coderag_query_latency_seconds_count",
                endpoint="search",
            )
            resp = httpx.post(
                f"{api_server.url}/v1/search",
                json={"query": "settle a payment on the ledger", "k": 3},
                headers=api_server.auth("admin"),
                timeout=60,
                trust_env=False,
            )
            assert resp.status_code == 200 and resp.json()["results"], resp.text
            api_text = scraped(f"{api_server.url}/metrics")
            after = sample(api_text, "coderag_query_latency_seconds_count", endpoint="search")
            assert after == before + 1
            wait_for(f"{series} == {after}", lambda: api.value(series) == after, 30, prom_log)

            # the worker's value, read from the broker at its scrape
            depth = 'coderag_queue_depth{job="coderag-worker",queue="embed"}'
            wait_for(f"{depth} == 3", lambda: api.value(depth) == 3.0, 30, prom_log)
            # the new counter is exported at 0 from the start, per kind, by the worker too
            errs = api.query('coderag_embedding_errors_total{job="coderag-worker"}')
            assert sorted((e["metric"]["kind"], e["value"][1]) for e in errs) == [
                ("documents", "0"),
                ("queries", "0"),
            ]

            # every alert expression evaluates against the live series, and the rule file
            # the shipped config names (relative path) is loaded and evaluated without error
            for rule in alert_rules():
                api.query(rule["expr"])  # a parse or type error is a 400 (asserted in get)

            def evaluated() -> list[dict[str, Any]] | None:
                rules = [r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]]
                done = rules and all(r["health"] != "unknown" for r in rules)
                return rules if done else None

            loaded = wait_for("the alert rules evaluated", evaluated, 30, prom_log)
            assert {r["name"] for r in loaded} == {r["alert"] for r in alert_rules()}
            assert [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"] == []
            # a healthy stack: nothing pending or firing
            assert [r["name"] for r in loaded if r["state"] != "inactive"] == []

            # every dashboard expression runs (Grafana's variables filled in as it would)
            for where, expr in grafana_exprs(json.loads(DASHBOARD.read_text())):
                if expr.startswith("label_values("):
                    continue  # a Grafana function, not PromQL; its metric is checked below
                promql = expr.replace("$__rate_interval", "1m").replace('"$repo"', '".*"')
                assert "$" not in promql, where
                api.query(promql)

            # and every metric they name is in what the two processes expose, live
            exposed = exposed_names(api_text) | exposed_names(scraped(worker_url))
            assert missing_names(exposed) == []
            assert api.query('up{job=~"coderag-.*"}')  # the one name Prometheus writes
    finally:
        broker.flushdb()
        broker.close()
