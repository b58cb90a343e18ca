"""deploy/monitoring against real programs: Debian's Prometheus scrapes the real server
(two workers) and answers queries for the request rate, the batch sizes and the drift
gauges; promtool checks and unit-tests the alert rules; the dashboard and the rules name
only metrics the server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from model_server.local_server import PORT_ATTEMPTS, RunningServer, free_port, start_server
from model_server.monitoring.metrics import Metrics
from tests.test_drift_server import send, stream, training_rows

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
SHIFTED = "mean texture"
ROUNDS, ROWS_PER_ROUND = 6, 400
DRIFT_GAUGES = {
    "model_server_feature_psi",
    "model_server_prediction_psi",
    "model_server_drift_rows",
    "model_server_drift_window_start_seconds",
}
# Appended at each scrape too; the live ones only once a tag has outcomes.
OUTCOME_GAUGES = {
    "model_server_outcomes",
    "model_server_live_quality",
    "model_server_live_quality_lower",
    "model_server_live_quality_upper",
    "model_server_heldout_quality",
}


def program(name: str) -> str:
    """A program of Debian's `prometheus` package; the test fails (never skips) without it."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert found, f"'{name}' is missing: install Debian's 'prometheus' package (`make tools` does, as root)"
    return found


def test_promtool_checks_the_alert_rules() -> None:
    result = subprocess.run([program("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    """PSI above 0.2 with enough rows fires after 15 minutes (not with too few rows); the
    shadow agreement, error rate and live accuracy alerts fire as written (alerts_test.yaml)."""
    result = subprocess.run(
        [program("promtool"), "test", "rules", "alerts_test.yaml"], capture_output=True, text=True, cwd=MONITORING
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_configuration_is_valid() -> None:
    result = subprocess.run(
        [program("promtool"), "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def monitored(
    trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    """The real server (configuration.yaml) and a real Prometheus scraping it every second,
    with the alert rules loaded; the Prometheus URL."""
    prometheus = program("prometheus")
    server = start_server(ROOT / "configuration.yaml")
    directory = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "model-server",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    process: subprocess.Popen[bytes] | None = None
    try:
        process, url = _start_prometheus(prometheus, directory)
        yield server, url
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        server.stop()


def _start_prometheus(prometheus: str, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on a free port once it is ready, started again on another port when a
    process took that one before Prometheus bound it."""
    attempt = 0
    while True:
        attempt += 1
        port = free_port()
        log_path = directory / f"prometheus-{attempt}.log"
        with log_path.open("wb") as log:  # the child keeps its own descriptor
            command = [prometheus, f"--config.file={directory / 'prometheus.yml'}"]
            command += [f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if process.poll() is None:
            process.terminate()
            process.wait(30)
        said = log_path.read_text(errors="replace")
        if "address already in use" not in said or attempt == PORT_ATTEMPTS:
            raise AssertionError(f"Prometheus was not ready:\n{said[-2000:]}")


def query(url: str, expression: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def value(url: str, expression: str) -> float | None:
    """The single value of an instant query, or None when it has no series yet."""
    result = query(url, expression)
    return float(result[0]["value"][1]) if result else None


@pytest.mark.integration
def test_prometheus_scrapes_request_rate_batch_sizes_and_drift(monitored: tuple[RunningServer, str]) -> None:
    server, url = monitored
    names, rows = training_rows("breast_cancer")
    column = names.index(SHIFTED)
    tag = 'model="breast_cancer",tag="breast_cancer:v1"'
    requests_query = f'sum(model_server_requests_total{{{tag},outcome="ok"}})'
    for round_ in range(ROUNDS):  # spread over several scrapes, so that rates have points
        shifted = stream(rows, ROWS_PER_ROUND, 10 + round_)
        for row in shifted:
            row[column] *= 1.5
        send(server, "breast_cancer", shifted)
        if round_ == 0:
            # A rate needs the counter scraped before it grows; on a busy machine the first
            # scrape that finds it can come several rounds late.
            _wait(lambda: value(url, requests_query) is not None, 30, "the first scrape of the request counter")
        time.sleep(1)
    sent = ROUNDS * ROWS_PER_ROUND
    # Drift rows and the request counter are written at different moments (the counter at the
    # end of the event loop's turn), so a scrape may find one before the other: both are waited for.
    _wait(
        lambda: value(url, f"model_server_drift_rows{{{tag}}}") == sent and value(url, requests_query) == sent / 100,
        30,
        f"Prometheus to scrape {sent} rows in {sent // 100} requests of 100 rows",
    )

    rate = value(url, f'sum(rate(model_server_requests_total{{{tag},outcome="ok"}}[30s]))')
    assert rate is not None and rate > 0
    # Each request holds 100 rows, and concurrent ones may share a call of at most 256 rows.
    median = value(url, f"histogram_quantile(0.5, sum by (le) (rate(model_server_batch_rows_bucket{{{tag}}}[30s])))")
    assert median is not None and 64 < median <= 256
    shifted_psi = value(url, f'model_server_feature_psi{{{tag},feature="{SHIFTED}"}}')
    assert shifted_psi is not None and shifted_psi > 0.2
    others = value(url, f'max(model_server_feature_psi{{{tag},feature!="{SHIFTED}"}})')
    assert others is not None and others < 0.1
    assert len(query(url, f"model_server_feature_psi{{{tag}}}")) == 30  # one series per feature
    assert value(url, f"model_server_prediction_psi{{{tag}}}") is not None

    # The alert rules loaded and evaluate without error against the real series.
    groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 6 and all(rule["health"] == "ok" for rule in rules), rules
    drift_alert = next(rule for rule in rules if rule["name"] == "ModelServerFeatureDrift")
    assert drift_alert["state"] == "pending"  # above 0.2 with enough rows; fires after 15 minutes

    # Every metric the dashboard and the rules use is one the server exports.
    scraped = set(httpx.get(f"{url}/api/v1/label/__name__/values", timeout=10).json()["data"])
    assert {
        "model_server_requests_total",
        "model_server_request_seconds_bucket",
        "model_server_batch_rows_bucket",
        "model_server_shadow_comparisons_total",
        "bentoml_service_request_total",
        *DRIFT_GAUGES,
    } <= scraped
    assert {"model_server_outcomes", "model_server_heldout_quality"} <= scraped
    exported = scraped | declared_metrics() | DRIFT_GAUGES | OUTCOME_GAUGES
    used = used_metrics()
    assert used - exported == set(), "the dashboard or rules name metrics the server does not export"


def declared_metrics() -> set[str]:
    """The sample names of every metric metrics.py declares (some appear only once used,
    such as the difference of a regression shadow)."""
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + s for family in registry.collect() for s in suffixes[family.type]}


def used_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    expressions += [dashboard["templating"]["list"][1]["definition"]]
    rules = yaml.safe_load(RULES.read_text())
    expressions += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {name for e in expressions for name in re.findall(r"\b(?:model_server|bentoml)_\w+", e)}


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
