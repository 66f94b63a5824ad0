"""deploy/grafana/orchestrator-dashboard.json: importable (a Prometheus datasource
variable, every panel on it) and every PromQL expression names only metrics the product
exports and labels they carry. (tests/integration/test_worker_metrics.py checks the names
against a real scrape too.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from orchestrator.metrics import DEFINITIONS, metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "orchestrator-dashboard.json"

#: The API's own metrics (api/metrics.py) and their labels.
API_METRICS = {
    "orchestrator_jobs": {"state"},
    "orchestrator_api_requests_total": {"method", "route", "status"},
    "orchestrator_api_request_seconds_bucket": {"route", "le"},
    "orchestrator_api_request_seconds_count": {"route"},
    "orchestrator_api_request_seconds_sum": {"route"},
    "orchestrator_notifications_pending": set(),
    "orchestrator_notifications_oldest_pending_seconds": set(),
    "orchestrator_enqueues_pending": set(),
}
PROMQL_WORDS = {"by", "without", "sum", "max", "min", "avg", "count", "rate", "increase",
                "histogram_quantile", "le", "outcome", "stage", "status", "state", "route",
                "method"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def stage_metric_labels() -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for d in DEFINITIONS:
        for name in metric_names():
            if name == d.name or name.startswith(d.name + "_"):
                labels[name] = set(d.labels) | ({"le"} if name.endswith("_bucket") else set())
    return labels


def test_the_dashboard_has_a_prometheus_datasource_variable_used_by_every_panel():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert board["panels"] and board["uid"] and board["title"]
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    # the only other variable: how the stage metrics are aggregated (README: Metrics)
    assert {o["value"] for o in variables["aggregation"]["options"]} == {"max", "sum"}


def test_the_panels_an_sre_opens_first_are_there():
    text = " ".join(expressions())
    for name in ("orchestrator_jobs", "orchestrator_stages_in_flight",
                 "orchestrator_stage_attempt_seconds_bucket",
                 "orchestrator_stage_retries_total", "orchestrator_stage_failures_total",
                 "orchestrator_stage_timeouts_total", "orchestrator_lock_losses_total",
                 "orchestrator_recovery_resumes_total"):
        assert name in text, name
    assert "histogram_quantile(0.95" in text and "histogram_quantile(0.5" in text


def test_every_expression_names_exported_metrics_and_their_labels():
    known = {**stage_metric_labels(), **API_METRICS}
    for expr in expressions():
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
        plain = expr.replace("${aggregation}", "sum").replace("$__rate_interval", "5m")
        assert "$" not in plain, expr
        names = set(re.findall(r"\borchestrator_[a-z_]+", plain))
        assert names and names <= known.keys(), (expr, names - known.keys())
        carried = set().union(*(known[n] for n in names))
        grouped = {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)",
                                                         plain)
                   for label in group.split(",") if label.strip()}
        selected = set(re.findall(r"[{,]\s*([a-z_]+)\s*(?:!=|=~|!~|=)", plain))
        assert grouped | selected <= carried, (expr, (grouped | selected) - carried)
        words = set(re.findall(r"\b[a-z_]+\b", re.sub(r'"[^"]*"', "", plain))) - names
        assert words <= PROMQL_WORDS, (expr, words - PROMQL_WORDS)
