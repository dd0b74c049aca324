"""What only the embedded transport promises: SQLite's errors (a locked file, a failed COMMIT, a
damaged file) leave it as the project's own, and a failed transaction leaves nothing behind.
The faults are injected with a wrapper around the real connection; everything else is real."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exchange.adapters import open_transport_url
from exchange.adapters.embedded import EmbeddedConsumer, EmbeddedTransport
from exchange.errors import TransportError, TransportUnavailable
from exchange.node.transport import Delivery
from tests.agencies import COMMUNE, POLICE
from tests.transport_helpers import message


class Faulty:
    """The real connection, except that statements starting with ``prefix`` raise ``error``."""

    def __init__(self, conn: sqlite3.Connection, prefix: str, error: sqlite3.Error) -> None:
        self.conn, self.prefix, self.error = conn, prefix, error

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith(self.prefix):
            raise self.error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


@dataclass
class Held:
    """A transport with one delivery held by a consumer and one dead letter."""

    transport: EmbeddedTransport
    consumer: EmbeddedConsumer
    delivery: Delivery

    def inject(self, prefix: str, error: sqlite3.Error) -> None:
        self.transport._conn = Faulty(self.transport.conn, prefix, error)  # type: ignore[assignment]

    def heal(self) -> None:
        conn = self.transport._conn
        assert isinstance(conn, Faulty)
        self.transport._conn = conn.conn


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    with EmbeddedTransport(tmp_path / "transport.db") as transport:
        transport.declare(COMMUNE)
        transport.publish_many([message(COMMUNE), message(COMMUNE)])
        with transport.consume(COMMUNE) as consumer:
            first, second = consumer.fetch(2, 1.0)
            consumer.dead_letter(second, "bad-signature")
            yield Held(transport, consumer, first)


OPERATIONS: dict[str, Callable[[Held], object]] = {
    "declare": lambda h: h.transport.declare(POLICE),
    "publish": lambda h: h.transport.publish(message(COMMUNE)),
    "publish_many": lambda h: h.transport.publish_many([message(COMMUNE)]),
    "delayed publish": lambda h: h.transport.publish(message(COMMUNE), delay=5),
    "fetch": lambda h: h.consumer.fetch(1, 0.0),
    "ack": lambda h: h.consumer.ack([h.delivery]),
    "nack": lambda h: h.consumer.nack([h.delivery]),
    "dead_letter": lambda h: h.consumer.dead_letter(h.delivery, "bad-signature"),
    "replay": lambda h: h.transport.replay(COMMUNE, h.transport.dead_letters(COMMUNE)[0].key),
    "consume": lambda h: h.transport.consume(POLICE),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_locked_commit_is_transport_unavailable_and_rolls_back(held: Held, operation: str) -> None:
    """A COMMIT that fails with 'database is locked' raises TransportUnavailable, chained to
    sqlite3's error, and the transaction is rolled back so the transport works once it is free."""
    before = (held.transport.depth(COMMUNE), len(held.transport.dead_letters(COMMUNE)))
    held.inject("COMMIT", sqlite3.OperationalError("database is locked"))
    with pytest.raises(TransportUnavailable, match="database is locked") as caught:
        OPERATIONS[operation](held)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    held.heal()
    assert (held.transport.depth(COMMUNE), len(held.transport.dead_letters(COMMUNE))) == before
    held.consumer.ack([held.delivery])


@pytest.mark.parametrize("read", [lambda t: t.dead_letters(COMMUNE), lambda t: t.depth(COMMUNE)],
                         ids=["dead_letters", "depth"])
def test_a_failing_read_is_transport_unavailable(held: Held, read: Callable[[EmbeddedTransport], object]) -> None:
    """A disk I/O error while reading raises TransportUnavailable, not sqlite3's error."""
    held.inject("SELECT", sqlite3.OperationalError("disk I/O error"))
    with pytest.raises(TransportUnavailable, match="disk I/O error"):
        read(held.transport)


def test_a_damaged_statement_is_a_transport_error(held: Held) -> None:
    """A damaged database (not a lock) is a TransportError that is not TransportUnavailable."""
    held.inject("SELECT", sqlite3.DatabaseError("database disk image is malformed"))
    with pytest.raises(TransportError, match="malformed") as caught:
        held.transport.publish(message(COMMUNE))
    assert not isinstance(caught.value, TransportUnavailable)


def test_closing_a_consumer_on_a_locked_file_does_not_raise(held: Held) -> None:
    """A consumer closed while the file is locked leaves its leases to run out, silently."""
    held.inject("BEGIN", sqlite3.OperationalError("database is locked"))
    held.consumer.close()


def test_a_lock_held_by_another_connection_is_transport_unavailable(tmp_path: Path) -> None:
    """While another connection holds the write lock past the busy timeout, publish and fetch raise
    TransportUnavailable; once it lets go, both work again."""
    path = tmp_path / "transport.db"
    with EmbeddedTransport(path) as transport, transport.consume(COMMUNE) as consumer:
        transport.conn.execute("PRAGMA busy_timeout = 50")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(TransportUnavailable, match="locked"):
                transport.publish(message(COMMUNE))
            with pytest.raises(TransportUnavailable, match="locked"):
                consumer.fetch(1, 0.0)
        finally:
            other.execute("ROLLBACK")
            other.close()
        transport.publish(message(COMMUNE))
        assert len(consumer.fetch(1, 1.0)) == 1


def test_a_file_that_is_not_a_database_is_a_transport_error(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises TransportError, not sqlite3.DatabaseError."""
    path = tmp_path / "transport.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(TransportError, match="not a database"):
        EmbeddedTransport(path)


def test_a_closed_transport_and_its_consumer_are_unavailable(tmp_path: Path) -> None:
    """Leaving the ``with`` block closes the transport; using it or its consumer afterwards raises
    TransportUnavailable."""
    with open_transport_url("", embedded_path=tmp_path / "transport.db") as transport:
        consumer = transport.consume(COMMUNE)
    with pytest.raises(TransportUnavailable, match="closed"):
        transport.publish(message(COMMUNE))
    with pytest.raises(TransportUnavailable, match="closed"):
        consumer.fetch(1, 0.0)


@pytest.mark.parametrize("renewing", [True, False])
def test_a_consumer_that_keeps_fetching_keeps_its_leases(tmp_path: Path, renewing: bool) -> None:
    """A consumer still fetching renews what it holds once half its lease is gone, so another
    consumer does not get it; one that stopped fetching (the control) loses it when the lease ends."""
    with EmbeddedTransport(tmp_path / "t.db", lease_seconds=2.0) as transport:
        transport.declare(POLICE)
        transport.publish(message(POLICE))
        first, second = transport.consume(POLICE), transport.consume(POLICE)
        held = first.fetch(1, 0)
        assert len(held) == 1
        time.sleep(1.2)
        if renewing:
            assert first.fetch(1, 0) == []
        time.sleep(1.2)
        assert len(second.fetch(1, 0)) == (0 if renewing else 1)
