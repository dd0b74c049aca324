"""The audit log: canonical entries in an RFC 9162 Merkle tree, inside the node's SQLite database.

An entry is appended in the caller's transaction, so it commits together with the state change
it records, or not at all. The hash of every complete aligned subtree is stored as it completes,
so appending costs amortized O(1) and the root and every proof O(log n) lookups. Triggers make
the tables append-only: an UPDATE or DELETE aborts, and a row can only be inserted at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exchange.audit import merkle
from exchange.errors import ExchangeError

ENTRY_VERSION = 1


class AuditError(ExchangeError):
    """The audit log refused an operation or found itself damaged."""


class Event(StrEnum):
    """What happened. The values are part of the canonical encoding: never rename one."""

    SUBMITTED = "submitted"
    SEALED = "sealed"
    PUBLISHED = "published"
    RECEIVED = "received"
    REFUSED = "refused"
    DELIVERED = "delivered"
    RECEIPT_SENT = "receipt-sent"
    RECEIPT_RECEIVED = "receipt-received"
    RETRANSMITTED = "retransmitted"
    DEAD_LETTERED = "dead-lettered"
    REPLAYED = "replayed"
    STEP_DONE = "step-done"
    STATUS_SENT = "status-sent"
    STATUS_RECEIVED = "status-received"
    RULES_LOADED = "rules-loaded"
    KEY_ROTATED = "key-rotated"
    NODE_STARTED = "node-started"
    NODE_STOPPED = "node-stopped"
    FORK_DETECTED = "fork-detected"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Entry:
    """One audited event. ``detail`` holds event-specific strings (a rules digest, a reason code,
    the operator who replayed a message, a due date)."""

    event: Event
    node: str
    time: dt.datetime = field(default_factory=utc_now)
    dossier: str | None = None
    procedure: str | None = None
    step: str | None = None
    message_id: str | None = None
    counterpart: str | None = None
    envelope_sha256: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)

    def encode(self, index: int) -> bytes:
        """The canonical form: sorted keys, no spaces, UTF-8, absent fields omitted, the leaf
        index included so that an entry cannot be moved to another position."""
        form: dict[str, Any] = {"v": ENTRY_VERSION, "i": index, "event": self.event.value,
                                "node": self.node, "time": _utc(self.time)}
        optional = {"dossier": self.dossier, "procedure": self.procedure, "step": self.step,
                    "message": self.message_id, "counterpart": self.counterpart,
                    "envelope": self.envelope_sha256}
        form.update({k: v for k, v in optional.items() if v is not None})
        if self.detail:
            form["detail"] = dict(self.detail)
        return canonical(form)

    @classmethod
    def decode(cls, data: bytes) -> tuple[int, Entry]:
        """The index and entry of a canonical encoding; AuditError if it is not one."""
        try:
            form = json.loads(data)
            index, entry = form["i"], cls(
                event=Event(form["event"]), node=form["node"],
                time=dt.datetime.fromisoformat(form["time"].replace("Z", "+00:00")),
                dossier=form.get("dossier"), procedure=form.get("procedure"), step=form.get("step"),
                message_id=form.get("message"), counterpart=form.get("counterpart"),
                envelope_sha256=form.get("envelope"), detail=form.get("detail", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(f"not an audit entry: {exc}") from None
        if form.get("v") != ENTRY_VERSION:
            raise AuditError(f"unknown entry version {form.get('v')!r}")
        if canonical(form) != data:
            raise AuditError("not in canonical form")
        return index, entry


def canonical(form: Mapping[str, Any]) -> bytes:
    return json.dumps(form, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_entries (
    idx INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    event TEXT NOT NULL,
    time TEXT NOT NULL,
    dossier TEXT,
    message_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_entries_dossier ON audit_entries (dossier) WHERE dossier IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_entries_message ON audit_entries (message_id) WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    made_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_keys (
    verifier TEXT PRIMARY KEY,
    attestation TEXT NOT NULL,
    certificate TEXT NOT NULL,
    from_size INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_entries_append_only BEFORE INSERT ON audit_entries
WHEN NEW.idx != (SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entries)
BEGIN SELECT RAISE(ABORT, 'audit entries are appended at the end only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoints_grow BEFORE INSERT ON audit_checkpoints
WHEN NEW.size <= (SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints)
BEGIN SELECT RAISE(ABORT, 'a checkpoint must cover more entries than the last'); END;
"""

APPEND_ONLY = ("audit_entries", "audit_nodes", "audit_checkpoints", "audit_keys")


def _append_only_triggers() -> str:
    return "\n".join(
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END;"
        for table in APPEND_ONLY for op in ("UPDATE", "DELETE"))


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA + _append_only_triggers())


def stored_subtree(conn: sqlite3.Connection, level: int, index: int) -> bytes:
    """The stored hash of a complete subtree; AuditError if it is missing (a damaged database)."""
    row = conn.execute("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
    if row is None:
        raise AuditError(f"the tree has no subtree at level {level} index {index}: damaged")
    return bytes(row[0])


class AuditLog:
    """The audit tree of one node, over a connection the caller owns (and commits)."""

    def __init__(self, conn: sqlite3.Connection, node: str) -> None:
        self.conn = conn
        self.node = node
        create_schema(conn)
        self.tree = merkle.SubtreeHashes(self._perfect)

    def _perfect(self, level: int, index: int) -> bytes:
        return stored_subtree(self.conn, level, index)

    @property
    def size(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entries").fetchone()
        return int(row[0])

    def append(self, entry: Entry) -> int:
        """Append in the current transaction; return the entry's index. The caller commits."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[Entry]) -> list[int]:
        """Append a batch in the current transaction, with one read of the tree's right edge."""
        size = self.size
        edge = self._right_edge(size)
        indexes, rows, nodes = [], [], []
        for entry in entries:
            data = entry.encode(size)
            rows.append((size, data, entry.event.value, _utc(entry.time), entry.dossier, entry.message_id))
            nodes.extend(_finish(edge, size, merkle.leaf_hash(data)))
            indexes.append(size)
            size += 1
        self.conn.executemany("INSERT INTO audit_entries (idx, data, event, time, dossier, message_id) "
                              "VALUES (?, ?, ?, ?, ?, ?)", rows)
        self.conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        return indexes

    def _right_edge(self, size: int) -> dict[int, bytes]:
        """The complete subtrees that a new leaf at ``size`` may merge with, by level."""
        edge = {}
        for level in range(size.bit_length()):
            if size >> level & 1:
                edge[level] = self._perfect(level, (size >> level) - 1)
        return edge

    def root(self, size: int | None = None) -> bytes:
        return self.tree.root(self.size if size is None else size)

    def leaf(self, index: int) -> bytes:
        return self._perfect(0, index)

    def entry(self, index: int) -> bytes:
        row = self.conn.execute("SELECT data FROM audit_entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise AuditError(f"no entry {index}")
        return bytes(row[0])

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        cursor = self.conn.execute("SELECT idx, data FROM audit_entries WHERE idx >= ? ORDER BY idx",
                                   (start,))
        for index, data in cursor:
            yield int(index), bytes(data)

    def dossier_entries(self, dossier: str) -> list[tuple[int, bytes]]:
        rows = self.conn.execute("SELECT idx, data FROM audit_entries WHERE dossier = ? ORDER BY idx",
                                 (dossier,)).fetchall()
        return [(int(i), bytes(d)) for i, d in rows]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.tree.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.tree.consistency_proof(old, new)


def _finish(edge: dict[int, bytes], index: int, leaf: bytes) -> list[tuple[int, int, bytes]]:
    """Rows for the leaf at ``index`` and every subtree it completes; updates ``edge``."""
    rows = [(0, index, leaf)]
    level, current = 0, leaf
    while index >> level & 1:
        current = merkle.node_hash(edge.pop(level), current)
        level += 1
        rows.append((level, index >> level, current))
    edge[level] = current
    return rows
