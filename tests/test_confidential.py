"""Citizens' data stays confidential on the broker: nodes on RabbitMQ, their configuration bundle
carrying every agency's certificate, encrypt each dossier to its recipient from the first transfer.
Raw messages read from a queue and from a dead-letter queue during the run hold none of the
applicant's name or identity number; the recipient node reads them all the same."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from exchange import clock
from exchange.adapters.amqp import EXCHANGE, dead_queue_name, queue_name
from exchange.bundle import authority, model
from exchange.codes import DossierCode
from exchange.envelope import pki
from exchange.envelope.encryption import RecipientCertificate
from exchange.envelope.model import Header, Kind
from exchange.envelope.sealing import Signer
from exchange.xml import safexml
from exchange.xml.names import DOSSIER_NS, q
from tests.agencies import BIRTH, COMMUNE, INSURANCE, POLICE
from tests.node_cluster import RULES, Cluster, cli, events_named, wait_until
from tests.transport_helpers import BROKER

NODES = (str(COMMUNE), str(POLICE), str(INSURANCE))


@pytest.fixture
def district(tmp_path: Path) -> Iterator[Cluster]:
    """The birth route on the host's RabbitMQ (fresh queues), each node anchored to the province's
    authority and running its bundle, which carries the three agencies' certificates."""
    cluster = Cluster.on("rabbitmq", tmp_path, *NODES)
    cluster.init(*NODES)
    authority.init_authority(tmp_path / "ca", tmp_path / "authority")
    certs = b"".join((tmp_path / "nodes" / a / "cert.pem").read_bytes() for a in NODES)
    signer = authority.Authority.load(tmp_path / "authority")
    document = model.build(RULES, (tmp_path / "ca" / "ca.pem").read_bytes(), None, 1, clock.now(),
                           clock.now() + dt.timedelta(days=30), certs)
    bundle = tmp_path / "v1.bundle"
    bundle.write_bytes(model.sign(document, signer.key, signer.cert))
    for agency in NODES:
        with cluster.config(agency).open("a", encoding="utf-8") as toml:
            toml.write(f'\n[config]\nanchor = "{tmp_path / "authority" / authority.CERT}"\n')
        assert cli("config", "install", "--config", cluster.config(agency), bundle) == 0
    yield cluster
    cluster.stop_all()


def applicant(dossier: Path) -> tuple[bytes, bytes]:
    root = safexml.parse(dossier.read_bytes())
    name = root.findtext(f"{q('Applicant', DOSSIER_NS)}/{q('FullName', DOSSIER_NS)}") or ""
    number = root.findtext(f"{q('Applicant', DOSSIER_NS)}/{q('IdNumber', DOSSIER_NS)}") or ""
    assert name
    assert number
    return name.encode("utf-8"), number.encode("ascii")


def raw_messages(queue: str) -> list[bytes]:
    """Every message waiting in ``queue``, read and put back."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    try:
        channel = connection.channel()
        bodies, tags = [], []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            bodies.append(body)
            tags.append(method.delivery_tag)
        for tag in tags:
            channel.basic_nack(tag, requeue=True)
        return bodies
    finally:
        connection.close()


def test_no_citizen_data_on_the_broker_yet_the_route_completes(district: Cluster, tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    for agency in NODES:
        district.start(agency)
    district.stop(str(POLICE))  # its queue stays: what the commune sends waits there, to be read raw
    dossier = tmp_path / "d.xml"
    assert cli("dossier", "sample", "--agency", str(COMMUNE), "--procedure", str(BIRTH), "--sequence", "1",
               "--out", dossier) == 0
    name, number = applicant(dossier)
    assert cli("submit", "--config", district.config(str(COMMUNE)), dossier) == 0
    wait_until(lambda: bool(raw_messages(queue_name(POLICE))), 60, "the transfer waiting in the police's queue")
    waiting = raw_messages(queue_name(POLICE))
    assert all(b"EncryptedPayload" in body for body in waiting)
    assert not any(name in body or number in body for body in waiting)

    # A transfer the police refuse (not on the route for that step) is dead-lettered, encrypted too.
    commune = district.root / "nodes" / str(COMMUNE)
    signer = Signer.load(commune / "cert.pem", commune / "key.pem")
    root = safexml.parse(dossier.read_bytes())
    header = Header(kind=Kind.TRANSFER, sender=COMMUNE, recipient=POLICE,
                    dossier=DossierCode(root.findtext(q("Code", DOSSIER_NS)) or ""), procedure=BIRTH, step="return")
    police_cert = RecipientCertificate.of(pki.load_cert(district.root / "nodes" / str(POLICE) / "cert.pem"))
    body = signer.seal(header, root, encrypt_for=police_cert)
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    try:
        connection.channel().basic_publish(EXCHANGE, str(POLICE), body,
                                           pika.BasicProperties(message_id=header.message_id, delivery_mode=2))
    finally:
        connection.close()
    district.start(str(POLICE))
    wait_until(lambda: bool(raw_messages(dead_queue_name(POLICE))), 60, "the refused transfer dead-lettered")
    dead = raw_messages(dead_queue_name(POLICE))
    assert not any(name in body or number in body for body in dead)
    _dead_show_keeps_the_dossier_off_the_terminal(district, name, header.message_id, capfd)
    district.finish_birth_route([_code(root)])
    assert events_named(district.log(str(POLICE)), "envelope.refused")


def _dead_show_keeps_the_dossier_off_the_terminal(district: Cluster, name: bytes, message_id: str,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """`dead show` gives the header and says the payload is encrypted; only --decrypt shows the dossier."""
    police = district.config(str(POLICE))
    capfd.readouterr()
    assert cli("dead", "list", "--config", police) == 0
    key = next(line.split()[1] for line in capfd.readouterr().out.splitlines() if message_id in line)
    assert cli("dead", "show", "--config", police, "--id", key) == 0
    shown = capfd.readouterr().out
    assert f'"MessageId": "{message_id}"' in shown
    assert '"payload": "encrypted to certificate' in shown
    assert name.decode() not in shown
    assert cli("dead", "show", "--config", police, "--id", key, "--envelope") == 0
    assert name.decode() not in capfd.readouterr().out
    assert cli("dead", "show", "--config", police, "--id", key, "--decrypt") == 0
    assert name.decode() in capfd.readouterr().out


def _code(root: object) -> str:
    return str(root.findtext(q("Code", DOSSIER_NS)))  # type: ignore[attr-defined]
