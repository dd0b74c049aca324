"""What only the RabbitMQ adapter promises, on a real broker: surviving a broker restart,
stale tags after a reconnect, errors translated, and least-privilege users per agency.

Tests that stop the broker or add users to it do so on a private node (``private_rabbit``), never
on the host's broker, where tests only publish and consume on fresh queues."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.adapters import open_transport
from exchange.adapters.amqp import AmqpTransport, delay_bucket
from exchange.adapters.embedded import EmbeddedTransport
from exchange.codes import AgencyCode
from exchange.errors import AccessRefused, ConfigError, StaleDelivery, TransportUnavailable
from exchange.node.config import NodeConfig
from exchange.node.transport import Message
from tests.rabbit_node import RabbitNode
from tests.test_transport_contract import drain
from tests.transport_helpers import delete_queues, fresh_agency, message, require_broker, wait_for_broker


@pytest.fixture
def transport(private_rabbit: RabbitNode) -> Iterator[AmqpTransport]:
    """A transport to the private node, which the test may stop and start."""
    with AmqpTransport(private_rabbit.url, reconnect_for=180) as transport:
        yield transport


@pytest.fixture
def agency(transport: AmqpTransport, private_rabbit: RabbitNode) -> Iterator[AgencyCode]:
    code = fresh_agency()
    transport.declare(code)
    yield code
    private_rabbit.ensure_running()
    wait_for_broker(url=private_rabbit.url)
    delete_queues(code, url=private_rabbit.url)


def publish_patiently(transport: AmqpTransport, item: Message, within: float = 90) -> None:
    """What an outbox does: retry a publish the transport could not confirm, until it is confirmed."""
    deadline = time.monotonic() + within
    while True:
        try:
            transport.publish(item)
            return
        except TransportUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_broker_restart_loses_nothing(transport: AmqpTransport, agency: AgencyCode,
                                      private_rabbit: RabbitNode) -> None:
    """Messages published before, during and after `rabbitmqctl stop_app`/`start_app` all arrive,
    the client reconnects by itself, and deliveries from before the restart cannot be acked."""
    consumer = transport.consume(agency, prefetch=10)
    before = [message(agency) for _ in range(20)]
    transport.publish_many(before)
    held = drain(consumer, 5)
    private_rabbit.stop_app()
    try:
        during = message(agency)
        time.sleep(1)
    finally:
        private_rabbit.start_app()
    publish_patiently(transport, during)
    after = [message(agency) for _ in range(20)]
    for item in after:
        publish_patiently(transport, item)
    with pytest.raises(StaleDelivery):
        consumer.ack(held)
    expected = {m.message_id for m in [*before, during, *after]}
    got: set[str] = set()
    deadline = time.monotonic() + 60
    while got < expected and time.monotonic() < deadline:
        batch = consumer.fetch(10, 1.0)
        got |= {d.message.message_id for d in batch}
        if batch:
            consumer.ack(batch)
    assert got >= expected, f"lost {len(expected - got)} messages"


def test_bad_credentials_are_access_refused() -> None:
    """A wrong password is reported as AccessRefused, quickly, not retried forever."""
    require_broker()
    with pytest.raises((AccessRefused, TransportUnavailable)):
        AmqpTransport("amqp://guest:wrong@127.0.0.1:5672/%2F", connect_timeout=5, reconnect_for=3)


def test_an_unreachable_broker_is_transport_unavailable() -> None:
    """A broker nobody listens for is TransportUnavailable within the connect timeout, not pika's error."""
    with pytest.raises(TransportUnavailable):
        AmqpTransport("amqp://guest:guest@127.0.0.1:1/%2F", connect_timeout=2, reconnect_for=1)


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:notaport/%2F", "nonsense"])
def test_a_malformed_broker_url_is_a_config_error(url: str) -> None:
    """A broker URL pika cannot parse is a ConfigError, not pika's ValueError or IndexError."""
    with pytest.raises(ConfigError, match="not a broker URL"):
        AmqpTransport(url)


def node_config(tmp_path: Path, broker: str) -> NodeConfig:
    return NodeConfig(source=tmp_path / "node.toml", agency=fresh_agency(), state_dir=tmp_path / "state",
                      ca=tmp_path / "no-such-ca.pem", cert=tmp_path / "cert.pem", key=tmp_path / "key.pem",
                      checkpoint_key=tmp_path / "checkpoint-key.pem", rules=tmp_path / "rules", broker=broker)


def test_an_amqps_node_trusts_the_ca_of_its_configuration(tmp_path: Path) -> None:
    """open_transport(config) gives an amqps:// broker the node's own CA (here missing: a ConfigError
    naming it), so that no caller can forget it."""
    with pytest.raises(ConfigError, match="no-such-ca.pem"):
        open_transport(node_config(tmp_path, "amqps://guest:guest@127.0.0.1:5671/%2F"))


def test_a_node_without_a_broker_uses_the_embedded_file_of_its_host(tmp_path: Path) -> None:
    """open_transport(config) without a broker opens the embedded transport the host's nodes share."""
    with open_transport(node_config(tmp_path, "")) as transport:
        assert isinstance(transport, EmbeddedTransport)
        assert transport.path == tmp_path / "transport.db"


def test_delays_round_up_to_a_few_buckets() -> None:
    """Delays with jitter share a handful of TTL queues."""
    assert delay_bucket(0.3) == 1_000
    assert delay_bucket(1.0) == 1_000
    assert delay_bucket(7.5) == 10_000
    assert delay_bucket(10 ** 7) == 86_400_000


def permissions_for(agency: AgencyCode) -> list[str]:
    """The least-privilege recipe of docs/rabbitmq.md: configure nothing, write to the envelope
    and delay exchanges, read only the agency's own queue and dead letters."""
    mine = re.escape(f"exchange.agency.{agency}")
    return ["^$", r"^(exchange\.envelopes|exchange\.delay\..*|amq\.default)$", f"^{mine}(\\.dead)?$"]


@pytest.fixture
def agency_user(transport: AmqpTransport,
                private_rabbit: RabbitNode) -> Iterator[tuple[AgencyCode, AgencyCode, str]]:
    """Two agencies' queues made by the administrator, and a user for the first one on the
    private node (never on the host's broker)."""
    mine, theirs = fresh_agency(), fresh_agency()
    transport.declare(mine)
    transport.declare(theirs)
    user, password = f"agency-{mine}", secrets.token_hex(12)
    private_rabbit.add_user(user, password)
    private_rabbit.set_permissions(user, *permissions_for(mine))
    yield mine, theirs, private_rabbit.url_for(user, password)
    private_rabbit.delete_user(user)
    delete_queues(mine, theirs, url=private_rabbit.url)


def test_agency_user_reads_only_its_own_queue(transport: AmqpTransport,
                                              agency_user: tuple[AgencyCode, AgencyCode, str]) -> None:
    """An agency's broker user may send to others and read its own queue, never another's."""
    mine, theirs, url = agency_user
    with AmqpTransport(url, reconnect_for=5) as restricted:
        restricted.publish(message(theirs))
        transport.publish(message(mine))
        own = restricted.consume(mine)
        assert len(drain(own, 1)) == 1
        with pytest.raises(AccessRefused):
            restricted.consume(theirs)
        with pytest.raises(AccessRefused):
            restricted.dead_letters(theirs)
    other = transport.consume(theirs)
    assert len(drain(other, 1)) == 1
