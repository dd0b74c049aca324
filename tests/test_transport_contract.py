"""One contract, two transports: every test runs on the embedded SQLite transport and on the real
RabbitMQ of this machine (no pika mocks); tests/test_amqp_tls.py runs them again over amqps on a
private TLS node, by overriding ``kind`` and ``broker``."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exchange.adapters.embedded import EmbeddedTransport
from exchange.codes import AgencyCode
from exchange.errors import StaleDelivery, TransportUnavailable, Unroutable
from exchange.node.transport import Consumer, Delivery, Transport
from tests.transport_helpers import Broker, connected, delete_queues, fresh_agency, message, require_broker

LEASE = 1.0  # embedded: how soon a crashed consumer's messages come back


@pytest.fixture(params=["embedded", "rabbitmq"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "rabbitmq":
        require_broker()
    return str(request.param)


@pytest.fixture
def broker() -> Broker:
    """The broker of the ``rabbitmq`` kind: the host's, in plain AMQP."""
    return Broker()


@pytest.fixture
def make(kind: str, broker: Broker, tmp_path: Path) -> Iterator[Callable[[], Transport]]:
    """Opens transports of the parametrized kind (several, as several processes would)."""
    with contextlib.ExitStack() as opened:

        def opener() -> Transport:
            if kind == "embedded":
                return opened.enter_context(EmbeddedTransport(tmp_path / "transport.db", lease_seconds=LEASE))
            return connected(opened.enter_context(broker.open()))

        yield opener


@pytest.fixture
def transport(make: Callable[[], Transport]) -> Transport:
    return make()


@pytest.fixture
def agency(transport: Transport, kind: str, broker: Broker) -> Iterator[AgencyCode]:
    code = fresh_agency()
    transport.declare(code)
    yield code
    if kind == "rabbitmq":
        delete_queues(code, broker=broker)


def drain(consumer: Consumer, count: int, timeout: float = 10.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``timeout`` passed."""
    found: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        found += consumer.fetch(count - len(found), min(1.0, max(0.0, deadline - time.monotonic())))
    return found


def test_confirmed_publish_is_delivered(transport: Transport, agency: AgencyCode) -> None:
    """A confirmed publish reaches the agency's consumer with its id, body and headers."""
    sent = message(agency, b"<Envelope>1</Envelope>", kind="transfer")
    transport.publish(sent)
    consumer = transport.consume(agency)
    (got,) = drain(consumer, 1)
    assert (got.message.message_id, got.message.body, got.message.headers["kind"]) == (
        sent.message_id, sent.body, "transfer")
    assert not got.redelivered
    consumer.ack([got])


def test_a_closed_transport_is_unavailable(make: Callable[[], Transport], agency: AgencyCode) -> None:
    """After its ``with`` block a transport refuses to publish with TransportUnavailable."""
    with make() as transport:
        transport.publish(message(agency))
    with pytest.raises(TransportUnavailable):
        transport.publish(message(agency))


def test_unroutable_is_an_error_not_a_loss(transport: Transport, agency: AgencyCode) -> None:
    """A message for an agency without a queue raises Unroutable; nothing is stored anywhere."""
    with pytest.raises(Unroutable, match="no queue for agency"):
        transport.publish(message(fresh_agency()))
    with pytest.raises(Unroutable):
        transport.publish(message(fresh_agency()), delay=1)


def test_acked_messages_are_gone(make: Callable[[], Transport], transport: Transport, agency: AgencyCode) -> None:
    """After a batch ack, a new consumer finds nothing left."""
    transport.publish_many([message(agency) for _ in range(10)])
    consumer = transport.consume(agency)
    got = drain(consumer, 10)
    consumer.ack(got)
    consumer.close()
    again = make().consume(agency)
    assert again.fetch(10, 1.5) == []


def test_nack_redelivers(transport: Transport, agency: AgencyCode) -> None:
    """A nacked delivery comes back, marked redelivered."""
    sent = message(agency)
    transport.publish(sent)
    consumer = transport.consume(agency)
    (first,) = drain(consumer, 1)
    consumer.nack([first])
    (second,) = drain(consumer, 1)
    assert second.message.message_id == sent.message_id
    assert second.redelivered
    consumer.ack([second])


def test_close_without_ack_redelivers(make: Callable[[], Transport], transport: Transport,
                                      agency: AgencyCode) -> None:
    """What a consumer held unacknowledged when its ``with`` block ended goes to the next consumer."""
    transport.publish_many([message(agency) for _ in range(3)])
    with transport.consume(agency) as consumer:
        held = drain(consumer, 3)
    other = make().consume(agency)
    again = drain(other, 3)
    assert {d.message.message_id for d in again} == {d.message.message_id for d in held}
    assert all(d.redelivered for d in again)
    other.ack(again)


def test_delay(transport: Transport, agency: AgencyCode) -> None:
    """A delayed message is not delivered before its delay, and is after it."""
    sent = message(agency)
    start = time.monotonic()
    transport.publish(sent, delay=1.0)
    consumer = transport.consume(agency)
    assert consumer.fetch(1, 0.5) == []
    (got,) = drain(consumer, 1, timeout=10)
    assert got.message.message_id == sent.message_id
    assert time.monotonic() - start >= 0.9
    consumer.ack([got])


def test_dead_letter_keeps_the_reason_and_can_be_replayed(transport: Transport, agency: AgencyCode) -> None:
    """A dead-lettered message leaves the queue, is listed with its reason, and replays."""
    sent = message(agency)
    transport.publish(sent)
    consumer = transport.consume(agency)
    (got,) = drain(consumer, 1)
    assert transport.dead_letter_count(agency) == 0
    consumer.dead_letter(got, "bad-signature: Signature verification failed")
    assert consumer.fetch(1, 1.0) == []
    assert transport.dead_letter_count(agency) == 1
    (letter,) = transport.dead_letters(agency)
    assert letter.message.message_id == sent.message_id
    assert letter.reason.startswith("bad-signature")
    replayed = transport.replay(agency, letter.key)
    assert replayed.message_id == sent.message_id
    (back,) = drain(consumer, 1)
    assert back.message.body == sent.body
    consumer.ack([back])
    assert transport.dead_letters(agency) == []
    assert transport.dead_letter_count(agency) == 0


def test_prefetch_window_is_respected(transport: Transport, agency: AgencyCode) -> None:
    """With prefetch 5, no more than 5 deliveries are outstanding until some are acked."""
    transport.publish_many([message(agency) for _ in range(12)])
    consumer = transport.consume(agency, prefetch=5)
    first = drain(consumer, 5)
    assert len(first) == 5
    assert consumer.fetch(10, 1.0) == []
    consumer.ack(first)
    second = drain(consumer, 5)
    assert len(second) == 5
    consumer.ack(second)
    consumer.ack(drain(consumer, 2))


def test_order_is_kept_within_a_queue(transport: Transport, agency: AgencyCode) -> None:
    """First deliveries come in publish order."""
    sent = [message(agency, f"<n>{i}</n>".encode()) for i in range(40)]
    transport.publish_many(sent[:20])
    for item in sent[20:]:
        transport.publish(item)
    consumer = transport.consume(agency, prefetch=100)
    got = drain(consumer, 40)
    assert [d.message.message_id for d in got] == [m.message_id for m in sent]
    consumer.ack(got)


def test_acking_a_delivery_of_another_consumer_is_stale(make: Callable[[], Transport], transport: Transport,
                                                         agency: AgencyCode) -> None:
    """A delivery can only be acknowledged by the consumer (and connection) that received it."""
    transport.publish(message(agency))
    consumer = transport.consume(agency)
    (got,) = drain(consumer, 1)
    stale = Delivery(got.message, got.tag, got.epoch + 1, got.redelivered)
    with pytest.raises(StaleDelivery):
        consumer.ack([stale])
    consumer.ack([got])


CRASHING_CONSUMER = textwrap.dedent("""
    import sys, time
    from exchange.codes import AgencyCode
    kind, target, agency = sys.argv[1], sys.argv[2], AgencyCode(sys.argv[3])  # then the broker's CA, if any
    if kind == "embedded":
        from exchange.adapters.embedded import EmbeddedTransport
        transport = EmbeddedTransport(target, lease_seconds=1.0)
    else:
        from exchange.adapters.amqp import AmqpTransport
        transport = AmqpTransport(target, ca_file=sys.argv[4] if len(sys.argv) > 4 else None)
        while not transport.health().connected:  # calls fail fast until the first connection
            time.sleep(0.05)
    consumer = transport.consume(agency, prefetch=10)
    got = []
    while len(got) < 5:
        got += consumer.fetch(5 - len(got), 1.0)
    print("HOLDING", len(got), flush=True)
    time.sleep(60)
""")


def test_interrupt_ends_a_fetch_wait(transport: Transport, agency: AgencyCode) -> None:
    """A fetch waiting for a minute returns when another thread interrupts it, and an interrupt
    made before a fetch ends that fetch's wait too (a wake is never lost to a race)."""
    consumer = transport.consume(agency)
    results: list[list[Delivery]] = []
    waiting = threading.Thread(target=lambda: results.append(consumer.fetch(1, 60.0)))
    waiting.start()
    time.sleep(0.2)  # let it wait
    consumer.interrupt()
    waiting.join(timeout=20)
    assert not waiting.is_alive()
    assert results == [[]]
    consumer.interrupt()
    early = threading.Thread(target=lambda: results.append(consumer.fetch(1, 60.0)))
    early.start()
    early.join(timeout=20)
    assert not early.is_alive()
    transport.publish(message(agency))
    assert len(drain(consumer, 1)) == 1  # and the consumer goes on delivering


def test_consumer_crash_redelivers(kind: str, make: Callable[[], Transport], transport: Transport,
                                   agency: AgencyCode, broker: Broker, tmp_path: Path) -> None:
    """A consumer killed with SIGKILL while holding deliveries loses none of them."""
    transport.publish_many([message(agency) for _ in range(5)])
    target = [str(tmp_path / "transport.db")] if kind == "embedded" else broker.argv()
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_CONSUMER, "utf-8")
    with subprocess.Popen([sys.executable, str(script), kind, target[0], str(agency), *target[1:]],
                          stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).parent.parent)) as child:
        try:
            assert child.stdout is not None
            lines = iter(child.stdout.readline, "")
            assert any(line.startswith("HOLDING 5") for line in lines)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    consumer = make().consume(agency)
    again = drain(consumer, 5, timeout=20)
    assert len(again) == 5
    assert all(d.redelivered for d in again)
    consumer.ack(again)
