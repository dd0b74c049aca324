"""The province's configuration bundle: signed by its authority, verified against each node's anchor,
never rolled back, applied with its rules, CA and CRL together at its time, audited; and, with
node processes, three running nodes taking a bundle's rules at its effective time without a
restart, and a revoked agency refused after the next bundle."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from lxml import etree

from exchange import clock
from exchange.adapters.embedded import EmbeddedTransport
from exchange.audit.entries import Entry, Event
from exchange.bundle import authority, model
from exchange.codes import ProcedureCode
from exchange.demo import samples
from exchange.envelope import pki
from exchange.envelope.model import Header, Kind
from exchange.errors import BundleBadSignature, BundleExpired, BundleRefused, BundleRollback, RuleError
from exchange.node import configuration
from exchange.node.config import NodeConfig, active_bundle_version
from exchange.node.context import NodeContext
from exchange.node.intake import receive_batch
from exchange.node.workflow import submit
from exchange.rules.load import load as load_rules
from exchange.store.states import Outcome
from exchange.xml.names import BUNDLE_NS, q
from tests.agencies import COMMUNE, INSURANCE, POLICE
from tests.in_process import settle
from tests.node_cluster import EXE, RULES, Cluster, cli, events_named, wait_until

NODES = (str(COMMUNE), str(POLICE), str(INSURANCE))


@pytest.fixture
def province(tmp_path: Path) -> Cluster:
    """A CA, its configuration authority, and the three birth-route nodes anchored to it."""
    cluster = Cluster(tmp_path)
    cluster.init(*NODES)
    authority.init_authority(tmp_path / "ca", tmp_path / "authority")
    for agency in NODES:
        with cluster.config(agency).open("a", encoding="utf-8") as toml:
            toml.write(f'\n[config]\nanchor = "{tmp_path / "authority" / authority.CERT}"\n')
    return cluster


def edited_rules(tmp_path: Path, budget: str = "4") -> Path:
    """The seed's rules with the birth registration's budget changed: another digest."""
    folder = tmp_path / f"rules-{budget}"
    shutil.copytree(RULES, folder)
    path = folder / "civil-status.xml"
    text = path.read_text("utf-8")
    path.write_text(text.replace('code="2.000986" scope="cross-level" budget="3"',
                                 f'code="2.000986" scope="cross-level" budget="{budget}"', 1), "utf-8")
    return folder


def publish(cluster: Cluster, version: int, rules: Path = RULES, *, effective: dt.datetime | None = None,
            days: int = 30, crl: bytes | None = None) -> bytes:
    signer = authority.Authority.load(cluster.root / "authority")
    start = effective or clock.now()
    document = model.build(rules, (cluster.root / "ca" / "ca.pem").read_bytes(), crl, version, start,
                           start + dt.timedelta(days=days))
    return model.sign(document, signer.key, signer.cert)


def node(cluster: Cluster, agency: str = str(COMMUNE)) -> NodeContext:
    return NodeContext.open(NodeConfig.load(cluster.config(agency)))


def events(ctx: NodeContext, event: Event) -> list[Entry]:
    return [e for e in (Entry.decode(data)[1] for _, data in ctx.audit.entries()) if e.event is event]


# In process ----------------------------------------------------------------------------------

def test_a_bundle_in_force_at_once_brings_its_rules_and_is_audited(province: Cluster, tmp_path: Path) -> None:
    rules = edited_rules(tmp_path)
    with node(province) as ctx:
        kept = configuration.install(ctx, publish(province, 1, rules), "v1.bundle")
        assert kept.active
        assert ctx.rules.digest == load_rules(rules).digest
        assert [e.detail["version"] for e in events(ctx, Event.CONFIG_INSTALLED)] == ["1"]
        assert [e.detail["version"] for e in events(ctx, Event.CONFIG_APPLIED)] == ["1"]
    again = NodeConfig.load(province.config(str(COMMUNE)))  # a command or a restart reads the bundle in force
    assert again.rules == again.state_dir / "config" / "active" / "rules"


def test_a_later_bundle_waits_for_its_time(province: Cluster, tmp_path: Path) -> None:
    with node(province) as ctx:
        configuration.install(ctx, publish(province, 1), "v1.bundle")
        first = ctx.rules.digest
        configuration.install(ctx, publish(province, 2, edited_rules(tmp_path), effective=clock.now()
                                           + dt.timedelta(seconds=1)), "v2.bundle")
        assert ctx.rules.digest == first
        assert active_bundle_version(ctx.config) == 1
        time.sleep(1.1)
        assert configuration.apply_due(ctx) == 2
        assert ctx.rules.digest != first


def test_a_rollback_is_refused_and_changes_nothing(province: Cluster) -> None:
    older = publish(province, 1)
    with node(province) as ctx:
        configuration.install(ctx, publish(province, 2), "v2.bundle")
        with pytest.raises(BundleRollback, match="version 1 is not newer than version 2"):
            configuration.install(ctx, older, "v1.bundle")
        with pytest.raises(BundleRollback):
            configuration.install(ctx, publish(province, 2), "v2-again.bundle")
        assert active_bundle_version(ctx.config) == 2


def test_a_tampered_bundle_is_refused(province: Cluster) -> None:
    data = publish(province, 1).replace(b"<Version>1</Version>", b"<Version>9</Version>")
    with node(province) as ctx, pytest.raises(BundleBadSignature):
        configuration.install(ctx, data, "tampered.bundle")


def test_a_bundle_signed_by_an_agency_is_refused(province: Cluster) -> None:
    key = pki.load_key(province.root / "nodes" / str(POLICE) / "key.pem")
    cert = pki.load_cert(province.root / "nodes" / str(POLICE) / "cert.pem")
    document = model.build(RULES, (province.root / "ca" / "ca.pem").read_bytes(), None, 7, clock.now(),
                           clock.now() + dt.timedelta(days=1))
    with node(province) as ctx, pytest.raises(BundleBadSignature, match="not signed by the configuration authority"):
        configuration.install(ctx, model.sign(document, key, cert), "forged.bundle")
    with node(province) as ctx:
        assert configuration.installed(ctx.config) == []


def test_an_expired_bundle_is_refused(province: Cluster) -> None:
    data = publish(province, 1, effective=clock.now() - dt.timedelta(days=3), days=1)
    with node(province) as ctx, pytest.raises(BundleExpired):
        configuration.install(ctx, data, "old.bundle")


def test_publish_refuses_rules_that_do_not_load(province: Cluster, tmp_path: Path) -> None:
    broken = edited_rules(tmp_path, budget="0")  # the steps take longer than the procedure's budget
    with pytest.raises(RuleError):
        publish(province, 1, broken)
    moment = clock.now()
    with pytest.raises(BundleRefused, match="expire"):
        model.build(RULES, (province.root / "ca" / "ca.pem").read_bytes(), None, 1, moment, moment)


def test_the_command_line_publishes_installs_and_tells(province: Cluster, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def publish_cli(version: str) -> Path:
        out = tmp_path / f"v{version}.bundle"
        assert cli("config", "publish", "--authority", province.root / "authority", "--rules", RULES, "--ca",
                   province.root / "ca" / "ca.pem", "--version", version, "--valid-days", "3", "--out", out) == 0
        return out

    first, second = publish_cli("1"), publish_cli("2")
    config = province.config(str(COMMUNE))
    assert cli("config", "install", "--config", config, second) == 0
    assert cli("config", "install", "--config", config, second) == 0  # the same again: nothing new
    assert cli("config", "install", "--config", config, first) == 1
    assert "config-rollback: " in capsys.readouterr().err
    assert cli("config", "status", "--config", config, "--json") == 0
    (document,) = json.loads(capsys.readouterr().out)
    assert (document["version"], document["active"], document["days_left"], document["expiring"]) == (2, True, 2, True)
    assert document["source"] == str(second)


def test_node_init_pins_the_anchor_and_refuses_an_agency_certificate(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cluster = Cluster(tmp_path)
    cluster.init(str(POLICE))
    authority.init_authority(tmp_path / "ca", tmp_path / "authority")
    argv = ["node", "init", "--agency", str(COMMUNE), "--ca", tmp_path / "ca", "--rules", RULES]
    assert cli(*argv, "--anchor", tmp_path / "nodes" / str(POLICE) / "cert.pem", "--out", tmp_path / "bad") == 1
    assert "not of the configuration authority" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing made
    assert cli(*argv, "--anchor", tmp_path / "authority" / authority.CERT, "--out", tmp_path / "good") == 0
    config = NodeConfig.load(tmp_path / "good" / "node.toml")
    assert configuration.anchor_of(config) == pki.load_cert(tmp_path / "authority" / authority.CERT)


# Node processes ---------------------------------------------------------------------------------

def heartbeat_digest(cluster: Cluster, agency: str) -> str:
    result = subprocess.run([EXE, "check", "--config", str(cluster.config(agency)), "--json"], capture_output=True,
                            text=True, timeout=60, check=False)
    return str(json.loads(result.stdout).get("heartbeat", {}).get("rules_digest", ""))


def test_check_tells_the_bundle_in_force_and_its_expiry(province: Cluster, tmp_path: Path) -> None:
    """A running node's heartbeat names the bundle in force and when it expires: `check --json`
    marks it expiring within a week, and the metric counts down to it."""
    bundle = tmp_path / "v1.bundle"
    bundle.write_bytes(publish(province, 1, days=3))
    commune = str(COMMUNE)
    assert cli("config", "install", "--config", province.config(commune), bundle) == 0
    province.start(commune)
    try:
        result = subprocess.run([EXE, "check", "--config", str(province.config(commune)), "--json"],
                                capture_output=True, text=True, timeout=60, check=False)
        report = json.loads(result.stdout)
        assert result.returncode == 0
        assert (report["heartbeat"]["config_version"], report["heartbeat"]["config_days_left"],
                report["heartbeat"]["config_expiring"]) == (1, 2, True)
    finally:
        province.stop_all()


def test_a_broadcast_bundle_changes_three_running_nodes_at_its_effective_time(province: Cluster,
                                                                             tmp_path: Path) -> None:
    """The authority's node (the commune here) installs the bundle and broadcasts it to the police
    and the insurance through the exchange; all three take its rules at its effective time, without
    a restart, and the two transfers of the bundle are receipted."""
    for agency in NODES:
        province.start(agency)
    try:
        pids = {a: province.processes[a].pid for a in NODES}
        before = load_rules(RULES).digest
        rules = edited_rules(tmp_path)
        bundle = tmp_path / "v1.bundle"
        bundle.write_bytes(publish(province, 1, rules, effective=clock.now() + dt.timedelta(seconds=8)))
        commune = province.config(str(COMMUNE))
        assert cli("config", "install", "--config", commune, bundle) == 0
        assert cli("config", "broadcast", "--config", commune, "--to", str(POLICE), "--to", str(INSURANCE),
                   bundle) == 0
        assert {heartbeat_digest(province, a) for a in NODES} == {before}  # not yet
        wait_until(lambda: {heartbeat_digest(province, a) for a in NODES} == {load_rules(rules).digest}, 60,
                   "every node on the bundle's rules")
        assert {a: province.processes[a].pid for a in NODES} == pids  # no restart
        wait_until(lambda: _acknowledged(province) == 2, 30, "both bundle transfers receipted")
    finally:
        province.stop_all()


def _acknowledged(cluster: Cluster) -> int:
    with sqlite3.connect(cluster.root / "nodes" / str(COMMUNE) / "state" / "node.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'configuration' AND state = 'acknowledged'"
                                ).fetchone()[0])


def test_a_bundle_nobody_trusts_is_neither_broadcast_nor_taken(province: Cluster, tmp_path: Path) -> None:
    forged_key = pki.load_key(province.root / "nodes" / str(POLICE) / "key.pem")
    forged_cert = pki.load_cert(province.root / "nodes" / str(POLICE) / "cert.pem")
    document = model.build(RULES, (province.root / "ca" / "ca.pem").read_bytes(), None, 3, clock.now(),
                           clock.now() + dt.timedelta(days=1))
    forged = model.sign(document, forged_key, forged_cert)
    path = tmp_path / "forged.bundle"
    path.write_bytes(forged)
    assert cli("config", "broadcast", "--config", province.config(str(COMMUNE)), "--to", str(POLICE), path) == 1
    payload = etree.Element(q("ConfigurationBundle", BUNDLE_NS), nsmap={None: BUNDLE_NS}, version="3")
    payload.text = base64.b64encode(forged).decode("ascii")
    header = Header(kind=Kind.CONFIGURATION, sender=COMMUNE, recipient=POLICE)
    with node(province) as commune, node(province, str(POLICE)) as police:
        body = commune.signer.seal(header, payload)
        (handled,) = receive_batch(police, [(header.message_id, body)])
        assert handled.outcome is Outcome.REFUSED
        assert handled.reason.startswith("config-bad-signature")
        assert configuration.installed(police.config) == []


def test_a_revoked_agency_is_refused_by_every_node_after_the_next_bundle(province: Cluster, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The police's certificate is revoked; the next bundle carries the CRL. The commune installs it
    and broadcasts it to the insurance: both running nodes apply it without a restart, the commune
    refuses the police's next envelope as revoked, and the insurance's trust store does too."""
    ca = pki.CertificateAuthority.load(province.root / "ca")
    ca.revoke(pki.load_cert(province.root / "nodes" / str(POLICE) / "cert.pem"), "keyCompromise")
    for agency in NODES:
        province.start(agency)
    try:
        pids = {a: province.processes[a].pid for a in NODES}
        code = province.submit(1)
        wait_until(lambda: code in province.ready(str(POLICE), "residence"), 60, "the police step ready")
        bundle = tmp_path / "v1.bundle"
        bundle.write_bytes(publish(province, 1, crl=_crl_pem(ca)))
        commune = province.config(str(COMMUNE))
        assert cli("config", "install", "--config", commune, bundle) == 0
        assert cli("config", "broadcast", "--config", commune, "--to", str(INSURANCE), bundle) == 0
        for agency in (str(COMMUNE), str(INSURANCE)):
            wait_until(lambda a=agency: bool(events_named(province.log(a), "config.applied")), 60,  # type: ignore[misc]
                       f"{agency} on the bundle")
        province.done(str(POLICE), code, "residence")
        wait_until(lambda: any(e.get("reason") == "revoked" for e in events_named(province.log(str(COMMUNE)),
                                                                                 "envelope.refused")), 60,
                   "the police's envelope refused as revoked at the commune")
        police = province.root / "nodes" / str(POLICE)
        envelope = tmp_path / "from-police.xml"
        assert cli("envelope", "seal", "--cert", police / "cert.pem", "--key", police / "key.pem", "--to",
                   str(INSURANCE), "--procedure", "2.000986", "--step", "insurance", _sample(tmp_path),
                   "--out", envelope) == 0
        active = province.root / "nodes" / str(INSURANCE) / "state" / "config" / "active"
        capsys.readouterr()
        assert cli("envelope", "verify", "--trust", active / "ca.pem", "--crl", active / "crl.pem", envelope) == 1
        assert "revoked" in capsys.readouterr().err
        assert {a: province.processes[a].pid for a in NODES} == pids  # no restart
    finally:
        province.stop_all()


def _sample(tmp_path: Path) -> Path:
    path = tmp_path / "dossier.xml"
    assert cli("dossier", "sample", "--agency", str(COMMUNE), "--procedure", "2.000986", "--out", path) == 0
    return path


def _crl_pem(ca: pki.CertificateAuthority) -> bytes:
    return ca.crl().public_bytes(serialization.Encoding.PEM)


# Two nodes on different bundles ------------------------------------------------------------------

NEW_PROCEDURE = "2.999986"


def with_new_procedure(tmp_path: Path) -> Path:
    """The seed's rules plus a copy of the birth registration under another code: a route that a
    node on the older bundle does not know."""
    folder = tmp_path / "rules-new-procedure"
    shutil.copytree(RULES, folder)
    path = folder / "civil-status.xml"
    text = path.read_text("utf-8")
    start = text.index('<procedure code="2.000986"')
    end = text.index("</procedure>", start) + len("</procedure>")
    copy = text[start:end].replace('code="2.000986"', f'code="{NEW_PROCEDURE}"', 1)
    path.write_text(text[:end] + "\n  " + copy + text[end:], "utf-8")
    return folder


def test_a_transfer_between_nodes_on_different_bundles_is_refused_as_a_mismatch_then_sent_again(
        province: Cluster, tmp_path: Path) -> None:
    older, newer = publish(province, 1), publish(province, 2, with_new_procedure(tmp_path))
    with node(province) as commune, node(province, str(POLICE)) as police, node(province, str(INSURANCE)) as ins, \
            EmbeddedTransport(commune.config.embedded_transport) as transport:
        for ctx in (commune, police, ins):
            transport.declare(ctx.agency)
            configuration.install(ctx, older, "v1.bundle")
        configuration.install(commune, newer, "v2.bundle")  # the commune has the newer bundle first
        spec = samples.SampleSpec(COMMUNE, ProcedureCode(NEW_PROCEDURE), size_kb=2, sequence=3)
        code = submit(commune, samples.to_bytes(samples.sample_dossier(spec)))
        settle(transport, commune, police, ins, rounds=2)
        refused = [e for e in events(police, Event.REFUSED) if e.detail.get("reason") == "config-mismatch"]
        assert refused
        assert "the sender runs configuration version 2, this node version 1" in refused[0].detail["text"]
        waiting = [e for e in events(commune, Event.RECEIPT_RECEIVED) if e.detail.get("reason") == "config-mismatch"]
        assert waiting
        assert (waiting[0].detail["peer_config"], waiting[0].detail["config"]) == ("1", "2")
        assert police.store.dossier(str(code)) is None  # nothing taken in
        configuration.install(police, newer, "v2.bundle")
        configuration.install(ins, newer, "v2.bundle")
        settle(transport, commune, police, ins)
        assert str(code) in {s.dossier for s in police.store.ready_steps(str(POLICE))}  # the same transfer, accepted
        assert _outbox_states(commune, "transfer") == {"acknowledged"}


def test_a_transfer_refused_for_a_mismatch_goes_again_when_the_sender_applies_a_bundle(province: Cluster) -> None:
    with node(province) as commune:
        with commune.store.transaction():
            commune.store.enqueue("m-1", str(POLICE), "transfer", None, None, b"<Envelope/>", "00")
            row = commune.store.outbox_by_message("m-1")
            assert row is not None
            row_id = row.id
            commune.store.wait_for_configuration(row_id, time.time() + 3600, "the police run version 2")
        configuration.install(commune, publish(province, 1), "v1.bundle")
        with commune.store.transaction() as conn:
            assert conn.execute("SELECT state, next_attempt FROM outbox WHERE id = ?", (row_id,)).fetchone() == (
                "pending", 0)


def _outbox_states(ctx: NodeContext, kind: str) -> set[str]:
    with ctx.store.transaction() as conn:
        return {state for (state,) in conn.execute("SELECT state FROM outbox WHERE kind = ?", (kind,))}


def test_a_crl_only_update_reaches_a_running_node_within_seconds(province: Cluster, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Between bundles, a CRL signed by the CA is installed on its own: the running commune refuses
    the revoked police from then on, without a restart; the same CRL again is refused as not newer."""
    for agency in NODES:
        province.start(agency)
    try:
        code = province.submit(1)
        wait_until(lambda: code in province.ready(str(POLICE), "residence"), 60, "the police step ready")
        ca = pki.CertificateAuthority.load(province.root / "ca")
        ca.revoke(pki.load_cert(province.root / "nodes" / str(POLICE) / "cert.pem"), "keyCompromise")
        crl = tmp_path / "crl.pem"
        crl.write_bytes(_crl_pem(ca))
        commune = province.config(str(COMMUNE))
        assert cli("config", "crl", "--config", commune, crl) == 0
        pid = province.processes[str(COMMUNE)].pid
        wait_until(lambda: bool(events_named(province.log(str(COMMUNE)), "trust.reloaded")), 30,
                   "the commune reloading its trust store")
        province.done(str(POLICE), code, "residence")
        wait_until(lambda: any(e.get("reason") == "revoked" for e in events_named(province.log(str(COMMUNE)),
                                                                                 "envelope.refused")), 60,
                   "the police's envelope refused as revoked at the commune")
        assert province.processes[str(COMMUNE)].pid == pid
        capsys.readouterr()
        assert cli("config", "crl", "--config", commune, crl) == 1
        assert "config-rollback" in capsys.readouterr().err
    finally:
        province.stop_all()
