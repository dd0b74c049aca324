"""Certificates renew: a node warns before its own certificate expires (log, heartbeat and
``exchange check``, metric), a renewed certificate and key installed on a running node are put in
force by SIGHUP for new envelopes while peers keep accepting the old one's, and the audit
checkpoint key rotates, attested by the agency key, with old checkpoints still verifiable."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from exchange.audit.checkpoints import NoteSigner, Verifier, attest, register_key, verify
from exchange.audit.entries import Entry, Event
from exchange.demo import samples
from exchange.envelope import pki
from exchange.envelope.sealing import Signer
from exchange.files import write_private
from exchange.node import health, reload
from exchange.node.metrics import Metrics
from exchange.node.transport import TransportHealth
from exchange.node.workflow import submit
from exchange.store import audit as audit_rows
from tests import in_process
from tests.agencies import BIRTH, COMMUNE
from tests.in_process import Trio, settle
from tests.node_cluster import EXE, INSURANCE, POLICE, Cluster, cli, wait_until

AGENCY = str(COMMUNE)
DSIG = "{http://www.w3.org/2000/09/xmldsig#}"


def renew(cluster: Cluster, agency: str, *, days: int | None = None) -> Path:
    """A renewed certificate for ``agency``, by request: the new key and certificate in a folder."""
    out = cluster.root / "renewals" / agency
    assert cli("pki", "request", "--agency", agency, "--out", out) == 0
    assert cli("pki", "issue", "--ca", cluster.root / "ca", "--csr", out / "request.csr", "--out", out,
               *(("--days", str(days)) if days else ())) == 0
    return out


def install(renewed: Path, node: Path) -> None:
    """Replace the node's certificate and key with a renewed pair, as an administrator would."""
    write_private(node / "key.pem", (renewed / "key.pem").read_bytes())
    shutil.copyfile(renewed / "cert.pem", node / "cert.pem")


def signer_serial(envelope: bytes) -> int:
    der = etree.fromstring(envelope).findtext(f".//{DSIG}X509Certificate") or ""
    return x509.load_der_x509_certificate(base64.b64decode(der)).serial_number


def sample(sequence: int) -> bytes:
    return samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=sequence)))


@pytest.fixture
def requested_trio(tmp_path: Path) -> Iterator[tuple[Cluster, Trio]]:
    cluster = Cluster(tmp_path)
    cluster.init_from_requests(*(str(a) for a in in_process.BIRTH_ROUTE))
    with in_process.trio(cluster) as nodes:
        yield cluster, nodes


# expiry warnings -------------------------------------------------------------------------------

def test_heartbeat_is_unhealthy_only_once_the_certificate_has_expired() -> None:
    """A certificate expiring in a day leaves the node healthy (``check --json`` shows the days
    left and that it is expiring); one that expired a second ago makes it unhealthy."""
    now = time.time()
    up = TransportHealth(True, now)
    soon = health.Heartbeat.of(AGENCY, up, certificate_not_after=now + 86400 * 1.5)
    assert soon.problems(now) == []
    details = soon.details(now)
    assert details["certificate_days_left"] == 1
    assert details["certificate_expiring"] is True
    far = health.Heartbeat.of(AGENCY, up, certificate_not_after=now + 86400 * 90).details(now)
    assert far["certificate_expiring"] is False
    expired = health.Heartbeat.of(AGENCY, up, certificate_not_after=now - 1)
    assert any("certificate expired" in p for p in expired.problems(now))


def test_a_node_whose_certificate_expires_in_ten_days_warns_in_log_check_and_metric(tmp_path: Path) -> None:
    """A node process with a certificate issued for 10 days logs ``certificate.expiring`` with the
    days left at start; ``exchange check --json`` shows the not-after and the days left and stays
    healthy; the gauge says the seconds left."""
    cluster = Cluster(tmp_path)
    cluster.init_from_requests(AGENCY, days=10)
    cert = pki.load_cert(cluster.config(AGENCY).parent / "cert.pem")
    cluster.start(AGENCY)
    try:
        warning = cluster.wait_for_event(AGENCY, "certificate.expiring")
        assert warning["days_left"] == 9
        assert warning["not_after"] == cert.not_valid_after_utc.isoformat()
        assert warning["level"] == "warning"

        def report() -> dict[str, object]:
            result = subprocess.run([EXE, "check", "--config", str(cluster.config(AGENCY)), "--json"],
                                    capture_output=True, text=True, timeout=60, check=False)
            document: dict[str, object] = json.loads(result.stdout)
            assert (result.returncode == 0) is document["healthy"]
            return document

        wait_until(lambda: report()["healthy"] is True, 30, "a healthy check")
        beat = report()["heartbeat"]
        assert isinstance(beat, dict)
        assert beat["certificate_days_left"] == 9
        assert beat["certificate_expiring"] is True
        assert beat["certificate_not_after"].startswith(f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%S}")
    finally:
        assert cluster.stop(AGENCY) == 0


def test_the_gauge_says_the_seconds_until_the_certificate_expires(
        requested_trio: tuple[Cluster, Trio]) -> None:
    commune = requested_trio[1][0]
    metrics = Metrics()
    metrics.refresh(commune)
    left = metrics.registry.get_sample_value("exchange_certificate_seconds_left")
    expected = commune.signer.cert.not_valid_after_utc.timestamp() - time.time()
    assert left is not None
    assert abs(left - expected) < 5


def test_the_warning_comes_at_start_and_again_a_day_later_not_before(
        requested_trio: tuple[Cluster, Trio], monkeypatch: pytest.MonkeyPatch) -> None:
    """Far from expiry: no warning. Within 30 days: a warning at the first poll, none at the next,
    one more a day later."""
    import datetime as dt

    commune = requested_trio[1][0]
    not_after = commune.signer.cert.not_valid_after_utc
    moment = [not_after - dt.timedelta(days=40)]
    watch = reload.CertificateWatch(commune, clock=lambda: moment[0])
    events: list[dict[str, object]] = []
    monkeypatch.setattr(reload.log, "warning", lambda event, **kw: events.append({"event": event, **kw}))
    watch.poll()
    assert events == []
    moment[0] = not_after - dt.timedelta(days=12, hours=1)
    watch.poll()
    watch.poll()
    assert [(e["event"], e["days_left"]) for e in events] == [("certificate.expiring", 12)]
    watch._warned_at -= reload.CERT_WARN_EVERY_S + 1  # a day passed
    moment[0] = not_after - dt.timedelta(days=11, hours=1)
    watch.poll()
    assert [(e["event"], e["days_left"]) for e in events] == [("certificate.expiring", 12),
                                                               ("certificate.expiring", 11)]


# renewal on a running node -----------------------------------------------------------------------

def test_envelopes_of_the_old_and_the_renewed_certificate_both_verify_at_a_peer(
        requested_trio: tuple[Cluster, Trio]) -> None:
    """The commune seals with its first certificate, is renewed and reloaded, seals with the new
    one: the police opens both (the old certificate still chains to the CA and is valid), and a
    dossier sent after the reload goes through the route, signed by the new certificate."""
    cluster, (commune, police, insurance, transport) = requested_trio
    first = submit(commune, sample(1))
    old_body = _transfer(commune, str(first))
    old_serial = commune.signer.cert.serial_number
    assert signer_serial(old_body) == old_serial
    install(renew(cluster, AGENCY), commune.config.source.parent)
    assert reload.reload(commune, ())
    assert commune.signer.cert.serial_number != old_serial
    second = submit(commune, sample(2))
    new_body = _transfer(commune, str(second))
    assert signer_serial(new_body) == commune.signer.cert.serial_number
    assert police.opener.open(old_body).signer_certificate.serial_number == old_serial  # type: ignore[union-attr]
    assert police.opener.open(new_body).signer_certificate.serial_number == commune.signer.cert.serial_number  # type: ignore[union-attr]
    settle(transport, commune, police, insurance)
    for code in (first, second):
        assert any(str(code) in p.name for p in police.config.delivery_dir.glob("*.xml"))
    counts = commune.store.counts()
    assert counts.get("outbox_dead", 0) == counts.get("outbox_refused", 0) == 0


def _transfer(ctx: object, dossier: str) -> bytes:
    conn = ctx.store.conn  # type: ignore[attr-defined]
    row = conn.execute("SELECT body FROM outbox WHERE kind = 'transfer' AND dossier = ? ORDER BY id LIMIT 1",
                       (dossier,)).fetchone()
    assert row is not None
    return bytes(row[0])


@pytest.mark.parametrize("bad", ["mismatched", "foreign", "other-agency"])
def test_a_renewed_pair_that_does_not_hold_is_refused_and_the_old_one_kept(
        requested_trio: tuple[Cluster, Trio], bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that is not the certificate's, a certificate of another CA or of another agency: the
    reload refuses it (``signer.reload_refused``) and the node keeps signing with the old pair."""
    cluster, (commune, *_rest) = requested_trio
    node = commune.config.source.parent
    old = commune.signer
    renewed = renew(cluster, AGENCY)
    if bad == "mismatched":
        write_private(renewed / "key.pem", pki.key_pem(pki.new_key()))
    elif bad == "foreign":
        rogue = pki.init_ca(cluster.root / "rogue", "Rogue CA")
        pki.issue_agency(rogue, COMMUNE, renewed, force=True)
    else:
        pki.issue_agency(pki.CertificateAuthority.load(cluster.root / "ca"), POLICE_CODE, renewed, force=True)
    install(renewed, node)
    errors: list[dict[str, object]] = []
    monkeypatch.setattr(reload.log, "error", lambda event, **kw: errors.append({"event": event, **kw}))
    assert not reload.reload(commune, ())
    assert [e["event"] for e in errors] == ["signer.reload_refused"]
    assert commune.signer is old


POLICE_CODE = in_process.BIRTH_ROUTE[1]


def test_a_node_set_up_with_only_the_ca_certificate_exchanges_dossiers_and_renews_under_sighup(
        tmp_path: Path) -> None:
    """Three node processes set up by request and ``node init --ca-cert``: a birth dossier goes the
    whole route. Then the commune's certificate is renewed, installed and SIGHUP sent: the next
    dossier's envelopes are signed by the new certificate and accepted by the police."""
    cluster = Cluster(tmp_path)
    cluster.init_from_requests(AGENCY, POLICE, INSURANCE)
    for agency in (AGENCY, POLICE, INSURANCE):
        cluster.start(agency)
    try:
        first = cluster.submit(1)
        cluster.finish_birth_route([first])
        assert {r["code"]: r["state"] for r in cluster.status(AGENCY)} == {first: "completed"}
        node = cluster.config(AGENCY).parent
        old_serial = pki.load_cert(node / "cert.pem").serial_number
        install(renew(cluster, AGENCY), node)
        new_serial = pki.load_cert(node / "cert.pem").serial_number
        start = cluster.log(AGENCY).stat().st_size
        cluster.processes[AGENCY].send_signal(signal.SIGHUP)
        reloaded = cluster.wait_for_event(AGENCY, "signer.reloaded", start)
        assert reloaded["serial"] == format(new_serial, "x")
        assert reloaded["previous_serial"] == format(old_serial, "x")
        second = cluster.submit(2)
        cluster.finish_birth_route([second])
        assert {r["code"]: r["state"] for r in cluster.status(AGENCY)} == {first: "completed", second: "completed"}
    finally:
        cluster.stop_all()
    with sqlite3.connect(node / "state" / "node.db") as conn:
        sent = {str(dossier): signer_serial(bytes(body)) for dossier, body in conn.execute(
            "SELECT dossier, body FROM outbox WHERE kind = 'transfer' AND recipient = ?", (POLICE,))}
        states = {state for (state,) in conn.execute("SELECT state FROM outbox WHERE kind = 'transfer'")}
    assert sent == {first: old_serial, second: new_serial}
    assert states == {"acknowledged"}
    assert cli("audit", "verify", "--config", cluster.config(POLICE)) == 0


# the checkpoint key ---------------------------------------------------------------------------

def test_rotating_the_checkpoint_key_keeps_old_checkpoints_verifiable(
        requested_trio: tuple[Cluster, Trio], capsys: pytest.CaptureFixture[str]) -> None:
    """``audit rotate-key`` records a new key attested by the agency key; a reload signs with it;
    the checkpoints of the old key and of the new one verify, by the verifier file and by the agency
    certificate; an attestation not made by the agency key is caught."""
    cluster, (commune, *_rest) = requested_trio
    config = cluster.config(AGENCY)
    old = commune.checkpointer.signer.verifier
    with commune.store.transaction():
        commune.record(Entry(Event.NODE_STARTED, AGENCY))
    first = commune.checkpointer.make()
    assert first is not None
    assert cli("audit", "rotate-key", "--config", config) == 0
    pub_lines = commune.config.checkpoint_verifier.read_text().split()
    assert pub_lines[0] == str(old)
    new = Verifier.parse(pub_lines[1])
    assert reload.reload(commune, ())
    assert commune.checkpointer.signer.verifier == new
    with commune.store.transaction():
        commune.record(Entry(Event.NODE_STOPPED, AGENCY))
    second = commune.checkpointer.make()
    assert second is not None
    verify(first.note, old)
    verify(second.note, new)
    cert = config.parent / "cert.pem"
    assert cli("audit", "verify", "--config", config) == 0
    assert cli("audit", "verify", "--config", config, "--cert", cert) == 0
    records = audit_rows.key_records(commune.store.conn)
    assert [r.verifier for r in records] == [str(old), str(new)]
    police_dir = cluster.root / "requests" / POLICE
    forged = Signer.load(police_dir / "cert.pem", police_dir / "key.pem")
    intruder = NoteSigner.generate(old.name).verifier  # a rotation attested by another agency's key
    with commune.store.transaction():
        register_key(commune.audit, intruder, attest(intruder, forged.key), (config.parent / "cert.pem").read_text())
    capsys.readouterr()
    assert cli("audit", "verify", "--config", config, "--cert", cert) == 1
    assert f"checkpoint key {intruder.name}+{intruder.key_hash.hex()} is not attested" in capsys.readouterr().err


def test_a_checkpoint_key_the_log_does_not_hold_is_refused_at_reload(
        requested_trio: tuple[Cluster, Trio]) -> None:
    """A checkpoint key file replaced by hand (not through ``rotate-key``) is not taken."""
    commune = requested_trio[1][0]
    old = commune.checkpointer.signer.verifier
    NoteSigner.generate(old.name).save(commune.config.checkpoint_key)
    assert not reload.reload(commune, ())
    assert commune.checkpointer.signer.verifier == old
