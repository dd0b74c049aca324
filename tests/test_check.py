"""`exchange check` judges the running node from its heartbeat: the rules digest and CRL in force,
the webhook backlog, the loop; rule files edited badly on disk do not make it unhealthy; `--json`
for machines."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from exchange.adapters.embedded import EmbeddedTransport
from exchange.node import health
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.transport import TransportHealth
from exchange.store.node import InboxRecord
from exchange.store.states import Outcome
from tests.agencies import COMMUNE
from tests.node_cluster import Cluster, cli


@pytest.fixture
def node(tmp_path: Path) -> Cluster:
    cluster = Cluster(tmp_path)
    cluster.init(str(COMMUNE))
    return cluster


def state_dir(node: Cluster) -> Path:
    return node.root / "nodes" / str(COMMUNE) / "state"


def beat(node: Cluster, **fields: object) -> None:
    now = time.time()
    heartbeat = health.Heartbeat.of(str(COMMUNE), TransportHealth(True, now), rules_digest="ab" * 32)
    dataclasses.replace(heartbeat, **fields).write(state_dir(node))  # type: ignore[arg-type]


def test_the_daemon_heartbeat_carries_rules_crl_and_webhook_backlog(node: Cluster) -> None:
    """The loop's heartbeat names the rules digest in force, the CRL's seconds left and the
    webhooks waiting (counted by the store)."""
    with NodeContext.open(NodeConfig.load(node.config(str(COMMUNE)))) as ctx:
        with ctx.store.transaction():
            ctx.store.record_inbox(InboxRecord("00000000-0000-4000-8000-000000000001", "000.30.10.H49", "transfer",
                                               None, None, "ab" * 32, Outcome.ACCEPTED, b"<x/>"), 0.0)
            ctx.store.webhook_enqueue("00000000-0000-4000-8000-000000000001", 0.0)
        assert ctx.store.webhook_backlog() == 1
        with EmbeddedTransport(ctx.config.embedded_transport) as transport:
            Daemon(ctx, transport)._heartbeat()  # noqa: SLF001
        beat_ = health.Heartbeat.read(ctx.config.state_dir)
        assert beat_ is not None
        assert beat_.rules_digest == ctx.rules.digest
        assert beat_.webhook_backlog == 1
        assert beat_.crl_seconds_left is not None
        assert beat_.crl_seconds_left > 0


def test_check_json_reports_the_heartbeat(node: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """`exchange check --json` prints the verdict, problems and heartbeat fields as one JSON document."""
    beat(node, crl_seconds_left=3600.0, webhook_backlog=2)
    assert cli("check", "--config", node.config(str(COMMUNE)), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is True
    assert report["problems"] == []
    assert report["heartbeat"]["rules_digest"] == "ab" * 32
    assert report["heartbeat"]["webhook_backlog"] == 2
    assert 3500 < report["heartbeat"]["crl_seconds_left"] <= 3600
    assert "audit_entries" in report


def test_check_text_names_the_new_fields(node: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """The healthy line names the rules digest, the webhook backlog and the CRL's freshness."""
    beat(node, crl_seconds_left=7200.0)
    assert cli("check", "--config", node.config(str(COMMUNE))) == 0
    out = capsys.readouterr().out
    assert out.startswith("healthy: ")
    assert "rules abababababab" in out
    assert "webhook backlog 0" in out
    assert "CRL fresh for" in out


@pytest.mark.parametrize(("fields", "says"), [
    ({"crl_seconds_left": -5.0}, "the CRL in force is out of date"),
    ({"webhook_backlog": health.WEBHOOK_BACKLOG_MAX + 1}, "webhook pushes wait"),
], ids=["crl-stale", "webhook-backlog"])
def test_check_is_unhealthy_on_a_stale_crl_or_a_webhook_backlog(
        node: Cluster, capsys: pytest.CaptureFixture[str], fields: dict[str, object], says: str) -> None:
    """A stale CRL or a webhook backlog beyond the bound exits 1 with the reason, in text and JSON."""
    beat(node, **fields)
    assert cli("check", "--config", node.config(str(COMMUNE))) == 1
    err = capsys.readouterr().err
    assert err.startswith("unhealthy: ")
    assert says in err
    assert cli("check", "--config", node.config(str(COMMUNE)), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is False
    assert any(says in p for p in report["problems"])


def test_check_ignores_rule_files_edited_badly_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A running node whose rule files on disk no longer load is still healthy: check judges the
    node's heartbeat (the rules it runs with), not the files."""
    rules = tmp_path / "rules"  # the node's own copy: the shipped rules are never touched
    shutil.copytree(Cluster(tmp_path).rules, rules)
    node = Cluster(tmp_path / "cluster", rules=rules)
    node.init(str(COMMUNE))
    assert NodeConfig.load(node.config(str(COMMUNE))).rules.resolve() == rules.resolve()
    for path in rules.glob("*.xml"):
        path.write_text("<not-rules", "utf-8")
    beat(node)
    capsys.readouterr()
    assert cli("check", "--config", node.config(str(COMMUNE))) == 0
    assert capsys.readouterr().out.startswith("healthy: ")


def test_check_says_a_stopped_node_is_unhealthy_in_json(node: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """A node that stopped (its last heartbeat says so) is unhealthy, exit 1, in JSON too."""
    beat(node, running=False)
    assert cli("check", "--config", node.config(str(COMMUNE)), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["healthy"] is False
    assert "stopped" in report["problems"][0]
