"""Nodes as separate processes, on the embedded transport and on the real RabbitMQ: the birth
route completes for many dossiers, an off-route sender is refused, and crashes at the worst
moments lose nothing and deliver nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.adapters import open_transport
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope.model import Header, Kind
from exchange.envelope.sealing import Signer
from exchange.node.config import NodeConfig
from exchange.node.transport import Message
from tests import agencies
from tests.node_cluster import BIRTH, COMMUNE, INSURANCE, POLICE, Cluster, cli, wait_until

HAI_HA_POLICE = str(agencies.HAI_HA_POLICE)
DOSSIERS = 6


@pytest.fixture(params=["embedded", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    district = Cluster.on(request.param, tmp_path, COMMUNE, POLICE, INSURANCE, HAI_HA_POLICE)
    yield district
    district.stop_all()


def run_birth_route(cluster: Cluster, count: int) -> list[str]:
    """Submit ``count`` birth dossiers, do every step where it is due, and return their codes."""
    codes = [cluster.submit(i) for i in range(1, count + 1)]
    cluster.finish_birth_route(codes)
    return codes


def test_birth_route_completes_with_receipts_and_audit(cluster: Cluster) -> None:
    """Commune → police and social insurance in parallel → back to the commune, for many dossiers;
    every transfer is receipted, every log verifies and the two sides reconcile."""
    cluster.init(COMMUNE, POLICE, INSURANCE)
    for agency in (COMMUNE, POLICE, INSURANCE):
        cluster.start(agency)
    codes = run_birth_route(cluster, DOSSIERS)
    assert {row["code"]: row["state"] for row in cluster.status(COMMUNE)} == dict.fromkeys(codes, "completed")
    # one merged transfer at the join and a status from each branch: 3 files per dossier
    wait_until(lambda: len(cluster.delivered(COMMUNE)) == 3 * DOSSIERS, 30, "deliveries at the commune")
    # Each branch got its dossier, then the origin's notice that it was completed.
    wait_until(lambda: len(cluster.delivered(POLICE)) == len(cluster.delivered(INSURANCE)) == 2 * DOSSIERS, 30,
               "completion notices at the branches")
    wait_until(lambda: _settled(cluster), 60, "every receipt")
    for agency in (COMMUNE, POLICE, INSURANCE):
        assert cluster.stop(agency) == 0
    bundles = {agency: cluster.verify_and_export(agency) for agency in (COMMUNE, POLICE, INSURANCE)}
    assert cli("audit", "reconcile", bundles[COMMUNE], bundles[POLICE]) == 0
    assert cli("audit", "reconcile", bundles[COMMUNE], bundles[INSURANCE]) == 0


def _settled(cluster: Cluster) -> bool:
    import sqlite3

    for agency in (COMMUNE, POLICE, INSURANCE):
        db = cluster.root / "nodes" / agency / "state" / "node.db"
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'published')").fetchone()[0]:
                return False
    return True


def test_off_route_sender_is_refused(cluster: Cluster) -> None:
    """A valid envelope from another district's police, for a step it does not perform, is
    refused with not-authorized, dead-lettered and audited; the node keeps running."""
    cluster.init(COMMUNE, HAI_HA_POLICE)
    cluster.start(COMMUNE)
    code = cluster.submit(1)
    signer = Signer.load(cluster.root / "nodes" / HAI_HA_POLICE / "cert.pem",
                         cluster.root / "nodes" / HAI_HA_POLICE / "key.pem")
    from exchange.envelope import dossier as dossiers

    root, _ = dossiers.load((cluster.root / "dossier-1.xml").read_bytes())
    header = Header(kind=Kind.TRANSFER, sender=AgencyCode(HAI_HA_POLICE), recipient=AgencyCode(COMMUNE),
                    dossier=DossierCode(code), procedure=ProcedureCode(BIRTH), step="return")
    with open_transport(NodeConfig.load(cluster.config(HAI_HA_POLICE))) as transport:
        transport.declare(AgencyCode(HAI_HA_POLICE))
        transport.publish(Message(AgencyCode(COMMUNE), signer.seal(header, root), header.message_id))
        wait_until(lambda: bool(transport.dead_letters(AgencyCode(COMMUNE))), 30, "the dead letter")
        (letter,) = transport.dead_letters(AgencyCode(COMMUNE))
        assert letter.reason.startswith("not-authorized")
    assert cluster.processes[COMMUNE].poll() is None
    assert cluster.stop(COMMUNE) == 0
    bundle = cluster.verify_and_export(COMMUNE)
    assert '\\"event\\":\\"refused\\"' in bundle.read_text("utf-8")
    assert "not-authorized" in bundle.read_text("utf-8")


@pytest.mark.parametrize("fault", ["after-commit-before-ack", "after-deliver-commit"])
def test_receiver_killed_at_the_worst_moment(cluster: Cluster, fault: str) -> None:
    """SIGKILL the police node after it committed a window and before it acked it (or after it
    recorded a delivery and before the file appeared): after a restart every dossier arrives
    exactly once at the agency system and every transfer has its receipt."""
    cluster.init(COMMUNE, POLICE, INSURANCE)
    cluster.start(COMMUNE)
    cluster.start(INSURANCE)
    victim = cluster.start(POLICE, fault=fault)
    codes = [cluster.submit(i) for i in range(1, 4)]
    victim.wait(timeout=60)
    assert victim.returncode == -9
    cluster.processes.pop(POLICE)
    cluster.start(POLICE)
    wait_until(lambda: cluster.ready(POLICE, "residence") >= set(codes), 60, "residence ready after restart")
    wait_until(lambda: len(cluster.delivered(POLICE)) >= len(codes), 30, "deliveries")
    assert len(cluster.delivered(POLICE)) == len(codes)
    wait_until(lambda: _settled(cluster), 60, "every receipt")
    for agency in (COMMUNE, POLICE, INSURANCE):
        assert cluster.stop(agency) == 0
    bundles = {agency: cluster.verify_and_export(agency) for agency in (COMMUNE, POLICE)}
    assert cli("audit", "reconcile", bundles[COMMUNE], bundles[POLICE]) == 0


def test_sender_killed_after_publish_before_mark(cluster: Cluster) -> None:
    """SIGKILL the commune after the broker confirmed its transfers and before it marked them:
    it publishes them again after a restart, and the police take each in exactly once."""
    cluster.init(COMMUNE, POLICE, INSURANCE)
    cluster.start(POLICE)
    cluster.start(INSURANCE)
    code = cluster.submit(1)
    victim = cluster.start(COMMUNE, fault="after-publish-before-mark")
    victim.wait(timeout=60)
    assert victim.returncode == -9
    cluster.processes.pop(COMMUNE)
    cluster.start(COMMUNE)
    wait_until(lambda: code in cluster.ready(POLICE, "residence"), 60, "residence ready")
    wait_until(lambda: _settled(cluster), 60, "every receipt")
    assert len(cluster.delivered(POLICE)) == 1
    for agency in (COMMUNE, POLICE, INSURANCE):
        assert cluster.stop(agency) == 0
    bundles = {agency: cluster.verify_and_export(agency) for agency in (COMMUNE, POLICE)}
    assert cli("audit", "reconcile", bundles[COMMUNE], bundles[POLICE]) == 0


def test_sighup_reloads_rules_and_keeps_them_on_a_bad_edit(tmp_path: Path) -> None:
    """A bad edit is refused on SIGHUP and the node keeps running on the old rules; a good edit
    is loaded, and each load's digest lands in the audit log."""
    import shutil
    import signal
    import time

    from tests.node_cluster import RULES

    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    district = Cluster(tmp_path, rules=rules)
    district.init(COMMUNE)
    node = district.start(COMMUNE)
    civil = rules / "civil-status.xml"
    good = civil.read_text("utf-8")
    try:
        civil.write_text(good.replace('scope="cross-level" budget="3"', 'scope="cross-levle" budget="3"', 1), "utf-8")
        node.send_signal(signal.SIGHUP)
        refused = district.wait_for_event(COMMUNE, "rules.reload_refused")
        assert any("cross-levle" in problem for problem in refused["problems"])
        assert node.poll() is None
        civil.write_text(good.replace('<step id="residence" action="register-residence" budget="2"',
                                      '<step id="residence" action="register-residence" budget="1"', 1), "utf-8")
        node.send_signal(signal.SIGHUP)
        district.wait_for_event(COMMUNE, "rules.reloaded")
        time.sleep(0.5)
    finally:
        assert district.stop(COMMUNE) == 0
    bundle = district.verify_and_export(COMMUNE).read_text("utf-8")
    assert bundle.count('rules-loaded') == 2  # at init and after the good edit


def test_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    """The first SIGTERM drains; a second one ends the process immediately."""
    import signal

    district = Cluster(tmp_path)
    district.init(COMMUNE)
    node = district.start(COMMUNE)
    node.send_signal(signal.SIGTERM)
    node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=30) in (0, 1)
    district.processes.pop(COMMUNE)


def test_check_and_metrics(tmp_path: Path) -> None:
    """`exchange check` exits 0 for a healthy node, and the metrics endpoint serves counters."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    district = Cluster(tmp_path)
    district.init(COMMUNE)
    toml = district.config(COMMUNE)
    toml.write_text(toml.read_text("utf-8").replace("metrics_port = 0", f"metrics_port = {port}"), "utf-8")
    district.start(COMMUNE)
    try:
        assert cli("check", "--config", toml) == 0
        def scrape() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
                return bytes(response.read())

        wait_until(lambda: b"exchange_healthy 1.0" in scrape(), 30, "metrics")
        assert b"exchange_audit_entries" in scrape()
    finally:
        district.stop_all()


def test_receipts_carry_checkpoints_that_peers_keep(tmp_path: Path) -> None:
    """With frequent checkpoints, each receipt carries the receiver's latest one with the key's
    attestation and a consistency proof; the sender keeps them, proven consistent."""
    import sqlite3

    district = Cluster(tmp_path)
    district.init(COMMUNE, POLICE, INSURANCE)
    often = {"EXCHANGE_AUDIT_CHECKPOINT_EVERY_ENTRIES": "3", "EXCHANGE_AUDIT_CHECKPOINT_EVERY_SECONDS": "0.2"}
    for agency in (COMMUNE, POLICE, INSURANCE):
        district.start(agency, **often)
    try:
        for round_ in range(3):
            codes = [district.submit(10 * round_ + i) for i in range(1, 3)]
            wait_until(lambda c=codes: district.ready(POLICE, "residence") >= set(c), 60, "residence")
            wait_until(lambda: _settled(district), 60, "receipts")
    finally:
        district.stop_all()
    with sqlite3.connect(tmp_path / "nodes" / COMMUNE / "state" / "node.db") as conn:
        rows = conn.execute("SELECT size, proven FROM peer_checkpoints WHERE origin = ? ORDER BY size",
                            (f"vn-exchange/audit/{POLICE}",)).fetchall()
        forks = conn.execute("SELECT COUNT(*) FROM audit_entries WHERE event = 'fork-detected'").fetchone()[0]
    assert len(rows) >= 2, rows
    assert all(proven for _, proven in rows)
    assert forks == 0
