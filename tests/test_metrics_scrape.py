"""A running node's /metrics holds every series the alert rules and the Grafana dashboard use, so
rules, dashboard and code cannot drift apart; and the exposition passes `promtool check metrics`."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool
from tests.node_cluster import COMMUNE, Cluster, wait_until

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
FROM_PROMETHEUS = {"up"}
"""Series Prometheus makes itself for every target, not the node."""
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, grouping clauses, keywords, functions and numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if match.group().lower() in PROMQL_WORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text("utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard() -> dict[str, object]:
    loaded = json.loads((MONITORING / "grafana-province.json").read_text("utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def panel_expressions(board: dict[str, object]) -> dict[str, str]:
    """Each panel query, keyed by panel title and query letter."""
    panels = board["panels"]
    assert isinstance(panels, list)
    return {f"{panel['title']} {target['refId']}": target["expr"]
            for panel in panels for target in panel.get("targets", [])}


@pytest.fixture(scope="module", params=["embedded", "rabbitmq"])
def exposition(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /metrics text of a node process, on either transport, once its first housekeeping ran
    (on RabbitMQ, the dead letters are counted in the node's dead-letter queue on the host's broker)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    district = Cluster.on(request.param, tmp_path_factory.mktemp("scrape"), COMMUNE)
    district.init(COMMUNE)
    toml = district.config(COMMUNE)
    toml.write_text(toml.read_text("utf-8").replace("metrics_port = 0", f"metrics_port = {port}"), "utf-8")
    district.start(COMMUNE)
    try:
        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
                return bytes(response.read()).decode()

        def counted() -> bool:  # the transport's dead letters are counted at the first housekeeping
            return not math.isnan(sample(scrape(), "exchange_dead_letters", direction="in"))

        wait_until(counted, 30, "the first housekeeping's gauges")
        yield scrape()
    finally:
        district.stop_all()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    raise AssertionError(f"{name}{labels} is not in the exposition")


def exported(text: str) -> set[str]:
    return {found.name for family in text_string_to_metric_families(text) for found in family.samples}


def test_the_expression_reader_finds_metric_names_only() -> None:
    """The PromQL reader keeps metric names and drops labels, functions, keywords, durations and variables."""
    expr = ('increase(a_total{job="x", y=~"$v"}[1d]) > 0 or (b > 0 unless c offset 1d) '
            '+ sum by (instance) (rate(d[$__rate_interval])) / 86400 and on(instance) e')
    assert metric_names(expr) == {"a_total", "b", "c", "d", "e"}


def test_every_metric_the_alert_rules_use_is_exported(exposition: str) -> None:
    """Each metric an alert rule reads is in the node's exposition (or is Prometheus's own ``up``)."""
    names = exported(exposition)
    for alert, expr in alert_expressions().items():
        missing = metric_names(expr) - names - FROM_PROMETHEUS
        assert not missing, f"{alert} reads {sorted(missing)}, which the node does not export"


def test_every_dashboard_query_names_only_exported_metrics(exposition: str) -> None:
    """The dashboard is valid JSON; each panel query and template variable reads only metrics the
    node exports (or ``up``), filtered by the instance variable."""
    board = dashboard()
    names = exported(exposition)
    queries = panel_expressions(board)
    assert len(queries) >= 10
    for title, expr in queries.items():
        missing = metric_names(expr) - names - FROM_PROMETHEUS
        assert not missing, f"panel {title!r} reads {sorted(missing)}, which the node does not export"
        assert 'instance=~"$instance"' in expr, f"panel {title!r} ignores the instance variable"
    templating = board["templating"]
    assert isinstance(templating, dict)
    variables = {v["name"]: v for v in templating["list"]}
    assert {"agency", "instance"} <= set(variables)
    for name in ("agency", "instance"):
        metric = re.match(r"label_values\((\w+)", variables[name]["query"]["query"])
        assert metric is not None
        assert metric.group(1) in names


def test_the_exposition_passes_promtool_and_says_the_agency(exposition: str) -> None:
    """`promtool check metrics` finds no problem in the node's exposition; the node says its agency."""
    promtool = require_tool("promtool")
    checked = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(), capture_output=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert sample(exposition, "exchange_node_info", agency=str(COMMUNE)) == 1
    assert sample(exposition, "exchange_dead_letters", direction="in") == 0
    assert sample(exposition, "exchange_checkpoint_age_seconds") >= 0
