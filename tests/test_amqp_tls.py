"""RabbitMQ over TLS, for real: a private node (tests/rabbit_node.py) with a TLS listener whose
certificate our test CA issued, and the rabbitmq_auth_mechanism_ssl plugin. The transport
contract suite runs again over amqps with certificate and host name verification; a wrong CA and
a wrong host name are refused with a clear error; an agency logs in with its agency certificate
(EXTERNAL) and reads only its own queue. The node is started once for the module (about 5 s)."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pika.exceptions as px
import pytest

from exchange.adapters import amqp, open_transport
from exchange.adapters.amqp import AmqpTransport
from exchange.codes import AgencyCode
from exchange.envelope import pki
from exchange.errors import AccessRefused, BrokerUntrusted, ConfigError
from exchange.node.config import NodeConfig
from tests.agencies import COMMUNE, INSURANCE, POLICE
from tests.conftest import started
from tests.node_cluster import Cluster, events_named, wait_until
from tests.rabbit_node import WRONG_HOST, RabbitNode, Tls, free_port, private_node
from tests.test_amqp import permissions_for
from tests.test_transport_contract import (  # noqa: F401 - the contract's fixtures and tests, run here over amqps
    agency,
    drain,
    make,
    test_a_closed_transport_is_unavailable,
    test_acked_messages_are_gone,
    test_acking_a_delivery_of_another_consumer_is_stale,
    test_close_without_ack_redelivers,
    test_confirmed_publish_is_delivered,
    test_consumer_crash_redelivers,
    test_dead_letter_keeps_the_reason_and_can_be_replayed,
    test_delay,
    test_interrupt_ends_a_fetch_wait,
    test_nack_redelivers,
    test_order_is_kept_within_a_queue,
    test_prefetch_window_is_respected,
    test_unroutable_is_an_error_not_a_loss,
    transport,
)
from tests.transport_helpers import Broker, delete_queues, fresh_agency, message


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> pki.CertificateAuthority:
    """The test CA: it issues the broker's certificate and the agencies'."""
    return pki.init_ca(tmp_path_factory.mktemp("tls") / "ca", "Quang Ninh TLS Test CA")


@pytest.fixture(scope="module")
def tls_node(tls_ca: pki.CertificateAuthority) -> Iterator[RabbitNode]:
    with started("a private RabbitMQ node with TLS", private_node(Tls(tls_ca, external=True))) as node:
        yield node


@pytest.fixture
def kind() -> str:
    """The contract's ``rabbitmq`` kind, here over amqps."""
    return "rabbitmq"


@pytest.fixture
def broker(tls_node: RabbitNode) -> Broker:
    """The private node's TLS listener, the guest user, verified against the test CA."""
    return Broker(tls_node.tls_url_for("guest", "guest"), tls_node.ca_file)


# Refusals -----------------------------------------------------------------------------------

def test_a_broker_certificate_from_another_ca_is_refused(tls_node: RabbitNode, tmp_path: Path) -> None:
    """A CA that did not issue the broker's certificate: refused at once, and says what to check."""
    rogue = pki.init_ca(tmp_path / "rogue", "Rogue CA")
    start = time.monotonic()
    with pytest.raises(BrokerUntrusted, match=r"certificate is refused: .*(self-signed|issuer).*broker_ca"):
        AmqpTransport(tls_node.tls_url_for("guest", "guest"), ca_file=rogue.directory / pki.CA_CERT)
    assert time.monotonic() - start < 5


def test_a_host_name_the_certificate_does_not_name_is_refused(tls_node: RabbitNode) -> None:
    """The same broker, its certificate from the right CA, reached at an address it does not
    name (127.0.0.2, where it listens too): refused, naming the mismatch."""
    with pytest.raises(BrokerUntrusted, match=f"not valid for '{WRONG_HOST}'.*host name"):
        AmqpTransport(tls_node.tls_url_for("guest", "guest", host=WRONG_HOST), ca_file=tls_node.ca_file)


def test_the_host_name_localhost_is_verified_too(tls_node: RabbitNode) -> None:
    """The certificate names localhost as well as 127.0.0.1."""
    with AmqpTransport(tls_node.tls_url_for("guest", "guest", host="localhost"), ca_file=tls_node.ca_file) as t:
        assert t.health().connected


def test_tls_settings_apply_to_every_broker_of_a_list(tls_node: RabbitNode) -> None:
    """With a list of brokers, the first unreachable, the second is reached over TLS and verified
    against the same CA, for its own host name."""
    down = f"amqps://guest:guest@127.0.0.1:{free_port()}/%2F"
    with AmqpTransport([down, tls_node.tls_url_for("guest", "guest", host="localhost")],
                       ca_file=tls_node.ca_file) as listed:
        assert listed.health().connected
        assert (listed.params.host, listed.params.port) == ("localhost", tls_node.tls_port)


def test_a_refused_certificate_in_a_list_is_not_skipped(tls_node: RabbitNode) -> None:
    """A broker of the list whose certificate does not name its host stops the transport, though
    another broker of the list would verify: a certificate refused is a configuration error (or
    an impostor), never an outage to fail over from."""
    urls = [tls_node.tls_url_for("guest", "guest", host=WRONG_HOST), tls_node.tls_url_for("guest", "guest")]
    with pytest.raises(BrokerUntrusted, match=f"not valid for '{WRONG_HOST}'"):
        AmqpTransport(urls, ca_file=tls_node.ca_file)


def test_a_certificate_login_needs_tls(tls_node: RabbitNode) -> None:
    with pytest.raises(ConfigError, match="needs TLS"):
        AmqpTransport(tls_node.url, external=True, cert_file="cert.pem")


# Agencies logging in with their certificate -------------------------------------------------

def node_toml(folder: Path, code: AgencyCode, url: str, ca: Path, identity: Path) -> NodeConfig:
    """A node configuration that logs in to the broker with its agency certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "node.toml").write_text(f"""
[node]
agency = "{code}"
state_dir = "state"
[pki]
ca = "{ca}"
cert = "{identity / pki.AGENCY_CERT}"
key = "{identity / pki.AGENCY_KEY}"
[audit]
checkpoint_key = "checkpoint.key"
[rules]
dir = "rules"
[transport]
broker = "{url}"
broker_auth = "certificate"
""", "utf-8")
    return NodeConfig.load(folder / "node.toml", environ={})


@pytest.fixture
def certificate_user(tls_node: RabbitNode, tls_ca: pki.CertificateAuthority,
                     broker: Broker) -> Iterator[tuple[AgencyCode, AgencyCode]]:
    """Two agencies' queues made by the administrator, and for the first a broker user named by
    its certificate's CN (its agency code), without a password, reading only its own queues."""
    mine, theirs = fresh_agency(), fresh_agency()
    with broker.open() as admin:
        admin.declare(mine)
        admin.declare(theirs)
    tls_node.add_user(str(mine), secrets.token_hex(12))
    tls_node.ctl("clear_password", str(mine))
    tls_node.set_permissions(str(mine), *permissions_for(mine))
    yield mine, theirs
    tls_node.delete_user(str(mine))
    delete_queues(mine, theirs, broker=broker)


def test_an_agency_logs_in_with_its_certificate_and_reads_only_its_own_queue(
        tls_node: RabbitNode, tls_ca: pki.CertificateAuthority, broker: Broker,
        certificate_user: tuple[AgencyCode, AgencyCode], tmp_path: Path) -> None:
    """node.toml's broker_auth = "certificate": EXTERNAL with the node's own cert.pem/key.pem, no
    password anywhere; it sends to another agency and reads its own queue, never the other's."""
    mine, theirs = certificate_user
    identity = tmp_path / "identity"
    pki.issue_agency(tls_ca, mine, identity)
    config = node_toml(tmp_path / "node", mine, tls_node.tls_url_for(), tls_node.ca_file, identity)
    assert (config.broker_ca_file, config.broker_cert_file, config.broker_external) == (
        tls_node.ca_file, identity / pki.AGENCY_CERT, True)
    with open_transport(config) as restricted, broker.open() as admin:
        restricted.publish(message(theirs))
        admin.publish(message(mine))
        own = restricted.consume(mine)
        assert len(drain(own, 1)) == 1
        assert restricted.dead_letter_count(mine) == 0  # the metrics' count needs no more rights
        with pytest.raises(AccessRefused):
            restricted.consume(theirs)
        with pytest.raises(AccessRefused):
            restricted.dead_letters(theirs)
        other = admin.consume(theirs)
        got = drain(other, 1)
        assert len(got) == 1
        other.ack(got)


def test_a_certificate_without_a_broker_user_is_refused(tls_node: RabbitNode, tls_ca: pki.CertificateAuthority,
                                                        tmp_path: Path) -> None:
    """A valid agency certificate whose CN has no user on the broker: the login is refused."""
    stranger = fresh_agency()
    pki.issue_agency(tls_ca, stranger, tmp_path / "id")
    with pytest.raises(AccessRefused, match="refused the login"):
        AmqpTransport(tls_node.tls_url_for(), ca_file=tls_node.ca_file, external=True,
                      cert_file=tmp_path / "id" / pki.AGENCY_CERT, key_file=tmp_path / "id" / pki.AGENCY_KEY)


def test_an_agency_certificate_from_another_ca_is_refused_by_the_broker(
        tls_node: RabbitNode, certificate_user: tuple[AgencyCode, AgencyCode], tmp_path: Path) -> None:
    """The same agency code, its certificate issued by a CA the broker does not trust: refused."""
    mine, _ = certificate_user
    rogue = pki.init_ca(tmp_path / "rogue", "Rogue CA")
    pki.issue_agency(rogue, mine, tmp_path / "id")
    with pytest.raises(AccessRefused, match="client certificate"):
        AmqpTransport(tls_node.tls_url_for(), ca_file=tls_node.ca_file, external=True,
                      cert_file=tmp_path / "id" / pki.AGENCY_CERT, key_file=tmp_path / "id" / pki.AGENCY_KEY)


def test_a_refusal_pika_heard_only_as_the_connections_end_is_still_named(
        tls_node: RabbitNode, certificate_user: tuple[AgencyCode, AgencyCode], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: over TLS 1.3 the broker refuses a client certificate after the handshake,
    and pika, writing, may see only an SSL EOF (seen in CI: the refusal was then taken for an
    outage and the transport waited it out). A fresh handshake and one read name the refusal."""
    mine, _ = certificate_user
    rogue = pki.init_ca(tmp_path / "rogue", "Rogue CA")
    pki.issue_agency(rogue, mine, tmp_path / "id")
    eof = px.IncompatibleProtocolError("StreamLostError: ('Stream connection lost: SSLEOFError(8, \\'EOF "
                                       "occurred in violation of protocol (_ssl.c:2427)\\')',)")

    def alert_unheard(*args: object, **kwargs: object) -> None:
        raise px.AMQPConnectionError(eof)

    def select_alert_unheard(self: AmqpTransport, params: object, lost: list[BaseException]) -> None:
        lost.append(eof)

    monkeypatch.setattr(amqp.pika, "BlockingConnection", alert_unheard)
    monkeypatch.setattr(AmqpTransport, "_connection", select_alert_unheard)
    with pytest.raises(AccessRefused, match="client certificate"):
        AmqpTransport(tls_node.tls_url_for(), ca_file=tls_node.ca_file, external=True, connect_timeout=5,
                      cert_file=tmp_path / "id" / pki.AGENCY_CERT, key_file=tmp_path / "id" / pki.AGENCY_KEY)


# A district over amqps ----------------------------------------------------------------------

def test_a_birth_dossier_completes_over_amqps_with_certificate_logins(
        tls_node: RabbitNode, tls_ca: pki.CertificateAuthority, broker: Broker, tmp_path: Path) -> None:
    """Three node processes whose agency certificates (from the broker's own CA) are their broker
    logins: no password anywhere, each reading only its own queue; a birth dossier goes the whole
    route over TLS, every node agrees it completed, and every audit log verifies."""
    agencies = (COMMUNE, POLICE, INSURANCE)
    shutil.copytree(tls_ca.directory, tmp_path / "ca")  # the nodes' CA is the one the broker trusts
    cluster = Cluster(tmp_path, broker=tls_node.tls_url_for())
    cluster.init(*(str(a) for a in agencies))
    with broker.open() as admin:
        for agency in agencies:
            admin.declare(agency)
    for agency in agencies:
        tls_node.add_user(str(agency), secrets.token_hex(12))
        tls_node.ctl("clear_password", str(agency))
        tls_node.set_permissions(str(agency), *permissions_for(agency))
    try:
        for agency in agencies:
            cluster.start(str(agency), EXCHANGE_TRANSPORT_BROKER_AUTH="certificate")
        code = cluster.submit(1)
        cluster.finish_birth_route([code])
        wait_until(lambda: all({"code": code, "state": "completed"}.items() <= row.items()
                               for agency in agencies for row in cluster.status(str(agency))
                               if row["code"] == code) and all(cluster.status(str(a)) for a in agencies), 60,
                   "every node to see the dossier completed")
        for agency in agencies:
            assert not events_named(cluster.log(str(agency)), "transport.unavailable")
            cluster.verify_and_export(str(agency))
    finally:
        cluster.stop_all()
        for agency in agencies:
            tls_node.delete_user(str(agency))
        delete_queues(*agencies, broker=broker)
