"""The embedded transport: a SQLite file (WAL) that the nodes of one host share, no broker needed.

A publish is confirmed when its transaction commits. A consumer *leases* what it fetches; an
ack deletes, a nack or a close releases, and a lease that runs out (the consumer crashed, or hung)
makes the message deliverable again, marked redelivered. Delays are a not-before time; dead
letters move to their own table with the reason. Several processes may publish and consume at
once: each statement that changes a queue runs in an immediate transaction, and SQLite's lock
serializes them. sqlite3's exceptions never leave this module: ``translated`` maps them.

The file is opened at construction if it can be, else (locked, unreachable) at the first call that
needs it, so a node starts while another process holds the lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from exchange.codes import AgencyCode
from exchange.errors import StaleDelivery, TransportError, TransportUnavailable, Unroutable
from exchange.node import wake
from exchange.node.transport import DEFAULT_PREFETCH, Closing, DeadLetter, Delivery, Message, TransportHealth
from exchange.store.db import begin_immediate

LEASE_SECONDS = 30.0
"""How long a fetched message stays invisible to other consumers without an ack or a renewal."""
POLL_MIN, POLL_MAX = 0.002, 0.05
BUSY_TIMEOUT_S = 0.5
"""How long a call waits for another process's write lock before it is ``TransportUnavailable``.
Short, so that a node loop never stalls behind a peer that holds the lock (a stopped process):
the loop retries on its backoff instead. A transaction of a healthy peer takes milliseconds."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    available_at REAL NOT NULL,
    lease_until REAL,
    consumer TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, seq);
CREATE INDEX IF NOT EXISTS messages_leased ON messages (consumer, lease_until) WHERE consumer IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
"""


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """Map sqlite3's (and the file system's) exceptions to the project's, most specific first:
    busy, locked, I/O, full or unopenable is ``TransportUnavailable`` (retry later); a damaged
    file or a misuse is ``TransportError``."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as exc:
        raise TransportUnavailable(f"{path}: the embedded transport is busy or unreachable: {exc}") from exc
    except sqlite3.Error as exc:
        raise TransportError(f"{path}: the embedded transport is damaged or misused: {exc}") from exc


class EmbeddedTransport(Closing):
    """The Transport port over one SQLite file."""

    def __init__(self, path: Path | str, *, lease_seconds: float = LEASE_SECONDS,
                 busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.lease_seconds = lease_seconds
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._since = time.time()
        with contextlib.suppress(TransportUnavailable), translated(self.path):
            self._conn = _open(self.path, busy_timeout)  # a damaged file still fails here

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, opened now if construction could not (sqlite3's errors leave it as is:
        callers translate them)."""
        if self._closed:
            raise TransportUnavailable(f"{self.path}: the transport is closed")
        if self._conn is None:
            self._conn = _open(self.path, self.busy_timeout)
        return self._conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, translated(self.path):
            yield self.conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock up front so that concurrent
        processes queue for it (in fine steps: ``db.begin_immediate``) instead of failing on a
        lock upgrade. Whatever fails, the COMMIT included, rolls back and leaves as the project's
        own error."""
        with self._lock, translated(self.path):
            conn = self.conn
            begin_immediate(conn, self.busy_timeout)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def declare(self, agency: AgencyCode) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (str(agency),))

    def publish(self, message: Message, delay: float = 0.0) -> None:
        self._insert([message], delay)

    def publish_many(self, messages: Sequence[Message]) -> None:
        self._insert(messages, 0.0)

    def _insert(self, messages: Sequence[Message], delay: float) -> None:
        now = time.time()
        with self._write() as conn:
            known = {r[0] for r in conn.execute("SELECT name FROM queues")}
            for message in messages:
                if str(message.recipient) not in known:
                    raise Unroutable(f"no queue for agency {message.recipient}: message "
                                     f"{message.message_id} was not published")
            conn.executemany(
                "INSERT INTO messages (queue, message_id, body, headers, available_at) VALUES (?, ?, ?, ?, ?)",
                [(str(m.recipient), m.message_id, m.body, json.dumps(dict(m.headers)), now + delay)
                 for m in messages])
        if not delay:
            for queue in {str(m.recipient) for m in messages}:
                wake.wake(self._wake_key(queue))

    def _wake_key(self, queue: str) -> str:
        """Where a queue's consumer waits to be told of a new message (node/wake.py)."""
        return f"{self.path.resolve()}#{queue}"

    def consume(self, agency: AgencyCode, prefetch: int = DEFAULT_PREFETCH) -> EmbeddedConsumer:
        self.declare(agency)
        return EmbeddedConsumer(self, str(agency), prefetch)

    def dead_letter_count(self, agency: AgencyCode) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT COUNT(*) FROM dead_letters WHERE queue = ?", (str(agency),)).fetchone()
        return int(row[0])

    def dead_letters(self, agency: AgencyCode) -> list[DeadLetter]:
        with self._read() as conn:
            rows = conn.execute("SELECT seq, message_id, body, headers, reason FROM dead_letters "
                                "WHERE queue = ? ORDER BY seq", (str(agency),)).fetchall()
        return [DeadLetter(Message(agency, bytes(body), mid, json.loads(headers)), reason, str(seq))
                for seq, mid, body, headers, reason in rows]

    def replay(self, agency: AgencyCode, key: str) -> Message:
        with self._write() as conn:
            row = conn.execute("SELECT message_id, body, headers FROM dead_letters WHERE queue = ? AND seq = ?",
                               (str(agency), int(key))).fetchone()
            if row is None:
                raise TransportError(f"no dead letter {key} for agency {agency}")
            conn.execute("DELETE FROM dead_letters WHERE seq = ?", (int(key),))
            conn.execute("INSERT INTO messages (queue, message_id, body, headers, available_at) "
                         "VALUES (?, ?, ?, ?, ?)", (str(agency), row[0], row[1], row[2], time.time()))
        return Message(agency, bytes(row[1]), row[0], json.loads(row[2]))

    def depth(self, agency: AgencyCode) -> int:
        """Messages waiting or leased in the agency's queue (for metrics and tests)."""
        with self._read() as conn:
            row = conn.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (str(agency),)).fetchone()
        return int(row[0])

    def health(self) -> TransportHealth:
        """Connected while its file is open (busy locks show as errors from the calls, not here)."""
        return TransportHealth(self._conn is not None and not self._closed, self._since)

    def close(self) -> None:
        with self._lock, translated(self.path):
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


class EmbeddedConsumer(Closing):
    """Leases messages from one queue; at most ``prefetch`` leased and unacknowledged at once."""

    def __init__(self, transport: EmbeddedTransport, queue: str, prefetch: int) -> None:
        self.transport = transport
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.name = uuid.uuid4().hex
        self.epoch = int(time.time() * 1000)
        self.closed = False
        self._interrupted = threading.Event()
        self._wakes = wake.Listener(transport._wake_key(queue), self.interrupt)

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        pause = POLL_MIN
        while True:
            found = self._lease(max_messages)
            if found or time.monotonic() >= deadline:
                return found
            if self._interrupted.wait(min(pause, max(0.0, deadline - time.monotonic()))):
                self._interrupted.clear()
                return self._lease(max_messages)
            pause = min(pause * 2, POLL_MAX)

    def interrupt(self) -> None:
        self._interrupted.set()

    def _lease(self, max_messages: int) -> list[Delivery]:
        if self.closed:
            raise TransportUnavailable("the consumer is closed")
        now = time.time()
        until = now + self.transport.lease_seconds
        with self.transport._write() as conn:
            # Renew what this consumer still holds once half its lease is gone: a slow batch must
            # not be handed to another (renewing at every fetch rewrote every held row each time).
            conn.execute("UPDATE messages SET lease_until = ? WHERE consumer = ? AND lease_until > ? "
                         "AND lease_until < ?", (until, self.name, now, now + self.transport.lease_seconds / 2))
            held = conn.execute("SELECT COUNT(*) FROM messages WHERE consumer = ? AND lease_until > ?",
                                (self.name, now)).fetchone()[0]
            room = min(max_messages, self.prefetch - int(held))
            if room <= 0:
                return []
            rows = conn.execute(
                "UPDATE messages SET lease_until = ?, consumer = ?, deliveries = deliveries + 1 "
                "WHERE seq IN (SELECT seq FROM messages WHERE queue = ? AND available_at <= ? "
                "AND (lease_until IS NULL OR lease_until <= ?) ORDER BY seq LIMIT ?) "
                "RETURNING seq, message_id, body, headers, deliveries",
                (until, self.name, self.queue, now, now, room)).fetchall()
        rows.sort(key=lambda r: r[0])
        recipient = AgencyCode(self.queue)
        return [Delivery(Message(recipient, bytes(body), mid, json.loads(headers)), seq, self.epoch,
                         redelivered=count > 1) for seq, mid, body, headers, count in rows]

    def _mine(self, deliveries: Sequence[Delivery]) -> list[int]:
        stale = [d for d in deliveries if d.epoch != self.epoch]
        if stale:
            raise StaleDelivery(f"{len(stale)} deliveries belong to another consumer")
        return [d.tag for d in deliveries]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._mine(deliveries)
        if not tags:
            return
        with self.transport._write() as conn:
            marks = ",".join("?" * len(tags))
            gone = conn.execute(f"DELETE FROM messages WHERE consumer = ? AND seq IN ({marks})",  # noqa: S608
                                (self.name, *tags)).rowcount
        if gone != len(tags):
            raise StaleDelivery(f"{len(tags) - gone} of {len(tags)} leases ran out before the ack; "
                                "those messages will be delivered again")

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        tags = self._mine(deliveries)
        if tags:
            with self.transport._write() as conn:
                marks = ",".join("?" * len(tags))
                conn.execute(f"UPDATE messages SET lease_until = NULL, consumer = NULL "  # noqa: S608
                             f"WHERE consumer = ? AND seq IN ({marks})", (self.name, *tags))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        (tag,) = self._mine([delivery])
        with self.transport._write() as conn:
            moved = conn.execute(
                "INSERT INTO dead_letters (seq, queue, message_id, body, headers, reason, dead_at) "
                "SELECT seq, queue, message_id, body, headers, ?, ? FROM messages WHERE seq = ? AND consumer = ?",
                (reason, time.time(), tag, self.name)).rowcount
            conn.execute("DELETE FROM messages WHERE seq = ? AND consumer = ?", (tag, self.name))
        if not moved:
            raise StaleDelivery(f"the lease on message {delivery.message.message_id} ran out")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wakes.close()
        try:
            with self.transport._write() as conn:
                conn.execute("UPDATE messages SET lease_until = NULL, consumer = NULL WHERE consumer = ?",
                             (self.name,))
        except TransportError:
            pass  # the transport closed first, or is locked: the leases run out on their own


def _open(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection in WAL mode; the schema is created only if it is missing, because creating
    it needs the write lock, which another process may hold for a while."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'dead_letters'").fetchone()[0] == 0:
            conn.executescript(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn
