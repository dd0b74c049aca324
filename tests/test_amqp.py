"""What only the RabbitMQ adapter promises, on a real broker: surviving a broker restart,
stale tags after a reconnect, errors translated, and least-privilege users per agency.

Tests that stop the broker or add users to it do so on a private node (``private_rabbit``), never
on the host's broker, where tests only publish and consume on fresh queues."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exchange.adapters import open_transport
from exchange.adapters.amqp import AmqpTransport, delay_bucket
from exchange.adapters.embedded import EmbeddedTransport
from exchange.codes import AgencyCode
from exchange.errors import AccessRefused, ConfigError, StaleDelivery, TransportUnavailable
from exchange.node.config import NodeConfig
from exchange.node.transport import Consumer, Message
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


OUTAGE_BUDGET_S = 2.0
"""The reconnect budget of the outage tests: short, so that waiting past it is quick."""


@pytest.fixture
def short_budget(private_rabbit: RabbitNode) -> Iterator[Callable[[], AmqpTransport]]:
    """Opens transports to the private node with a 2 s reconnect budget and at most 1 s between
    attempts; closed at the end of the test."""
    with contextlib.ExitStack() as opened:
        def opener() -> AmqpTransport:
            return opened.enter_context(AmqpTransport(private_rabbit.url, connect_timeout=5,
                                                      reconnect_for=OUTAGE_BUDGET_S, reconnect_max=1.0))
        yield opener


def wait_connected(transport: AmqpTransport, within: float = 30) -> float:
    """Seconds until the transport reports itself connected; fails after ``within``."""
    started = time.monotonic()
    while not transport.health().connected:
        assert time.monotonic() - started < within, f"not reconnected: {transport.health()}"
        time.sleep(0.05)
    return time.monotonic() - started


def round_trip(transport: AmqpTransport, consumer: Consumer, agency: AgencyCode) -> None:
    """A message published now reaches the consumer."""
    sent = message(agency)
    transport.publish(sent)
    got = drain(consumer, 1)
    assert [d.message.message_id for d in got] == [sent.message_id]
    consumer.ack(got)


def outage(node: RabbitNode, seconds: float) -> None:
    """The broker stops accepting connections for ``seconds``, then takes logins again."""
    node.stop_app()
    try:
        time.sleep(seconds)
    finally:
        node.start_app()


def test_a_connection_lost_after_the_budget_still_reconnects(private_rabbit: RabbitNode,
                                                             short_budget: Callable[[], AmqpTransport]) -> None:
    """A broker down for longer than the reconnect budget is still reconnected to once it is back
    (the failures past the budget are logged as errors), and its consumer receives again."""
    transport = short_budget()
    agency = fresh_agency()
    consumer = transport.consume(agency)
    round_trip(transport, consumer, agency)
    time.sleep(OUTAGE_BUDGET_S + 0.5)  # a connection older than its budget, as a node's always is
    with capture_logs() as events:
        private_rabbit.stop_app()
        try:
            time.sleep(OUTAGE_BUDGET_S + 1.5)
            health = transport.health()
            assert not health.connected
            assert health.last_error
        finally:
            private_rabbit.start_app()
        wait_connected(transport)
    assert any(e["event"] == "amqp.reconnect_failing" and e["log_level"] == "error" for e in events)
    round_trip(transport, consumer, agency)


def test_each_outage_gets_a_fresh_budget(private_rabbit: RabbitNode,
                                         short_budget: Callable[[], AmqpTransport]) -> None:
    """Two outages in a row, each longer than the budget, are each recovered from, and the second
    starts with warnings again: a connection that was made restarts the budget."""
    transport = short_budget()
    agency = fresh_agency()
    consumer = transport.consume(agency)
    for _ in range(2):
        with capture_logs() as events:
            outage(private_rabbit, OUTAGE_BUDGET_S + 1.5)
            wait_connected(transport)
        levels = [e["log_level"] for e in events if e["event"].startswith("amqp.reconnect")]
        assert levels[0] == "warning", levels
        assert "error" in levels, levels
        round_trip(transport, consumer, agency)


def test_calls_while_disconnected_fail_at_once(private_rabbit: RabbitNode,
                                               short_budget: Callable[[], AmqpTransport]) -> None:
    """While the broker is down, publish, publish_many, declare and consume raise
    TransportUnavailable in well under a second each, so that the daemon's loop never waits."""
    transport = short_budget()
    agency = fresh_agency()
    transport.declare(agency)
    private_rabbit.stop_app()
    try:
        wait_connected_lost(transport)
        calls: list[Callable[[], object]] = [
            lambda: transport.publish(message(agency)), lambda: transport.publish_many([message(agency)] * 3),
            lambda: transport.publish(message(agency), delay=5), lambda: transport.declare(agency),
            lambda: transport.consume(agency)]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(TransportUnavailable):
                call()
            assert time.monotonic() - started < 0.2
    finally:
        private_rabbit.start_app()


def wait_connected_lost(transport: AmqpTransport, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while transport.health().connected:
        assert time.monotonic() < deadline, "the transport did not notice the broker stopping"
        time.sleep(0.05)


def test_a_transport_made_while_the_broker_is_down_connects_when_it_is_up(
        private_rabbit: RabbitNode, short_budget: Callable[[], AmqpTransport]) -> None:
    """A transport (a node) started while its broker is down is made at once, reports itself
    disconnected, and connects by itself when the broker comes up."""
    private_rabbit.stop_app()
    try:
        started = time.monotonic()
        transport = short_budget()
        assert time.monotonic() - started < 2
        assert not transport.health().connected
        time.sleep(OUTAGE_BUDGET_S + 0.5)
    finally:
        private_rabbit.start_app()
    wait_connected(transport)
    agency = fresh_agency()
    consumer = transport.consume(agency)
    round_trip(transport, consumer, agency)


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


def test_a_publish_whose_connection_is_lost_before_it_went_out_fails_at_once(
        transport: AmqpTransport, agency: AgencyCode, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the connection closes before the I/O loop runs the publication handed to
    it (the loop stops with it). The caller is told the connection was lost, at once, instead of
    waiting the whole confirm timeout (seen: a node's loop stalled 30 s when a cluster node died);
    the transport reconnects and the next publish goes through."""
    real = transport._call_soon

    def lost_before_sending(fn: Callable[[], None]) -> None:
        conn = transport._conn
        assert conn is not None
        real(conn.close)  # the loop runs the close, never the publication

    monkeypatch.setattr(transport, "_call_soon", lost_before_sending)
    with pytest.raises(TransportUnavailable, match="before the messages were published"):
        transport.publish(message(agency))
    monkeypatch.undo()
    deadline = time.monotonic() + 60
    while not transport.health().connected and time.monotonic() < deadline:
        time.sleep(0.1)
    transport.publish(message(agency))
    assert transport.depth(agency) == 1


def test_bad_credentials_are_access_refused() -> None:
    """A wrong password is reported as AccessRefused, quickly, not retried forever."""
    require_broker()
    with pytest.raises((AccessRefused, TransportUnavailable)):
        AmqpTransport("amqp://guest:wrong@127.0.0.1:5672/%2F", connect_timeout=5, reconnect_for=3)


def test_an_unreachable_broker_is_transport_unavailable_at_once() -> None:
    """A transport to a broker nobody listens on is made at once, says it is disconnected and why,
    and every call that needs the broker raises TransportUnavailable at once, not pika's error."""
    started = time.monotonic()
    with AmqpTransport("amqp://guest:guest@127.0.0.1:1/%2F", connect_timeout=2, reconnect_for=1) as transport:
        health = transport.health()
        assert not health.connected
        assert "cannot reach the broker" in health.last_error
        agency = fresh_agency()
        for call in (lambda: transport.publish(message(agency)), lambda: transport.declare(agency),
                     lambda: transport.consume(agency)):
            with pytest.raises(TransportUnavailable):
                call()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:notaport/%2F", "nonsense"])
def test_a_malformed_broker_url_is_a_config_error(url: str) -> None:
    """A broker URL pika cannot parse is a ConfigError, not pika's ValueError or IndexError."""
    with pytest.raises(ConfigError, match="not a broker URL"):
        AmqpTransport(url)


def node_config(tmp_path: Path, broker: str) -> NodeConfig:
    return NodeConfig(source=tmp_path / "node.toml", agency=fresh_agency(), state_dir=tmp_path / "state",
                      ca=tmp_path / "no-such-ca.pem", cert=tmp_path / "cert.pem", key=tmp_path / "key.pem",
                      checkpoint_key=tmp_path / "checkpoint-key.pem", rules=tmp_path / "rules",
                      brokers=(broker,) if broker else ())


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
