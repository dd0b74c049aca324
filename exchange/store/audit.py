"""Every SQL statement about the audit tables (entries, subtree hashes, checkpoints, keys) and the
witness tables (peers' checkpoints, what was sent to each peer).

Functions take the caller's connection and return plain values; none commits, so each write
lands in the caller's transaction. The tables exist because the database was migrated
(``exchange.store.schema``); the append-only triggers there refuse anything but appends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple


class EntryRow(NamedTuple):
    """One row of ``audit_entries``: the exact entry bytes and the columns indexed for look-ups."""

    idx: int
    data: bytes
    event: str
    time: str
    dossier: str | None
    message_id: str | None


class NodeRow(NamedTuple):
    """The hash of the complete subtree of 2**level leaves starting at leaf ``idx * 2**level``."""

    level: int
    idx: int
    hash: bytes


@dataclass(frozen=True)
class KeyRecord:
    """A checkpoint verifier key, its attestation by the agency key, and from which size it signs."""

    verifier: str
    attestation: str
    certificate: str
    from_size: int


# Entries and subtree hashes ----------------------------------------------------------------

def next_index(conn: sqlite3.Connection) -> int:
    """The index the next entry takes: one past the last stored entry."""
    return int(conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entries").fetchone()[0])


def count_entries(conn: sqlite3.Connection) -> int:
    """The number of stored entries (less than ``next_index`` if rows were removed)."""
    return int(conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0])


def append(conn: sqlite3.Connection, entries: Iterable[EntryRow], nodes: Iterable[NodeRow]) -> None:
    conn.executemany("INSERT INTO audit_entries (idx, data, event, time, dossier, message_id) "
                     "VALUES (?, ?, ?, ?, ?, ?)", entries)
    conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)


def entry(conn: sqlite3.Connection, index: int) -> bytes | None:
    row = conn.execute("SELECT data FROM audit_entries WHERE idx = ?", (index,)).fetchone()
    return bytes(row[0]) if row else None


def first_entry(conn: sqlite3.Connection) -> bytes | None:
    row = conn.execute("SELECT data FROM audit_entries ORDER BY idx LIMIT 1").fetchone()
    return bytes(row[0]) if row else None


def entries(conn: sqlite3.Connection, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of every stored entry from ``start`` on, in order."""
    cursor = conn.execute("SELECT idx, data FROM audit_entries WHERE idx >= ? ORDER BY idx", (start,))
    for index, data in cursor:
        yield int(index), bytes(data)


def dossier_entries(conn: sqlite3.Connection, dossier: str) -> list[tuple[int, bytes]]:
    rows = conn.execute("SELECT idx, data FROM audit_entries WHERE dossier = ? ORDER BY idx", (dossier,))
    return [(int(index), bytes(data)) for index, data in rows]


def subtree(conn: sqlite3.Connection, level: int, index: int) -> bytes | None:
    row = conn.execute("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
    return bytes(row[0]) if row else None


def subtrees_at(conn: sqlite3.Connection, level: int) -> Iterator[tuple[int, bytes]]:
    """(index, hash) of every stored subtree hash at ``level``, in order."""
    for index, value in conn.execute("SELECT idx, hash FROM audit_nodes WHERE level = ? ORDER BY idx", (level,)):
        yield int(index), bytes(value)


# Checkpoints and keys ----------------------------------------------------------------------

def add_checkpoint(conn: sqlite3.Connection, size: int, root: bytes, note: str, made_at: str) -> None:
    conn.execute("INSERT INTO audit_checkpoints (size, root, note, made_at) VALUES (?, ?, ?, ?)",
                 (size, root, note, made_at))


def checkpoint_notes(conn: sqlite3.Connection) -> list[str]:
    """Every signed checkpoint note, smallest size first."""
    return [str(note) for (note,) in conn.execute("SELECT note FROM audit_checkpoints ORDER BY size")]


def latest_checkpoint_note(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    return str(row[0]) if row else None


def first_checkpoint_note(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT note FROM audit_checkpoints ORDER BY size LIMIT 1").fetchone()
    return str(row[0]) if row else None


def has_key(conn: sqlite3.Connection, verifier: str) -> bool:
    return conn.execute("SELECT 1 FROM audit_keys WHERE verifier = ?", (verifier,)).fetchone() is not None


def add_key(conn: sqlite3.Connection, key: KeyRecord, added_at: str) -> None:
    conn.execute("INSERT INTO audit_keys (verifier, attestation, certificate, from_size, added_at) "
                 "VALUES (?, ?, ?, ?, ?)", (key.verifier, key.attestation, key.certificate, key.from_size, added_at))


def key_records(conn: sqlite3.Connection) -> list[KeyRecord]:
    rows = conn.execute("SELECT verifier, attestation, certificate, from_size FROM audit_keys ORDER BY from_size")
    return [KeyRecord(str(v), str(a), str(c), int(s)) for v, a, c, s in rows]


# Witnessing ---------------------------------------------------------------------------------

def sent_size(conn: sqlite3.Connection, peer: str) -> int | None:
    """The size of the checkpoint last sent to ``peer``, if any."""
    row = conn.execute("SELECT size FROM sent_checkpoints WHERE peer = ?", (peer,)).fetchone()
    return int(row[0]) if row else None


def set_sent_size(conn: sqlite3.Connection, peer: str, size: int) -> None:
    conn.execute("INSERT INTO sent_checkpoints (peer, size) VALUES (?, ?) "
                 "ON CONFLICT (peer) DO UPDATE SET size = excluded.size", (peer, size))


def peer_roots(conn: sqlite3.Connection, origin: str) -> dict[int, bytes]:
    """The roots held of a peer's checkpoints, by size."""
    rows = conn.execute("SELECT size, root FROM peer_checkpoints WHERE origin = ?", (origin,))
    return {int(size): bytes(root) for size, root in rows}


def add_peer_checkpoint(conn: sqlite3.Connection, origin: str, size: int, root: bytes, note: str, *,
                        received_at: str, proven: bool) -> None:
    conn.execute("INSERT INTO peer_checkpoints (origin, size, root, note, received_at, proven) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (origin, size, root, note, received_at, int(proven)))


def peer_notes(conn: sqlite3.Connection, origin: str) -> list[str]:
    """The notes held of a peer's checkpoints, smallest size first."""
    rows = conn.execute("SELECT note FROM peer_checkpoints WHERE origin = ? ORDER BY size", (origin,))
    return [str(note) for (note,) in rows]


def all_peer_notes(conn: sqlite3.Connection) -> list[str]:
    """The notes held of every peer's checkpoints, by peer, smallest size first: what a bundle
    carries so that auditors of those peers can hold them to what they showed this node."""
    rows = conn.execute("SELECT note FROM peer_checkpoints ORDER BY origin, size")
    return [str(note) for (note,) in rows]


# Counting, for the metrics ------------------------------------------------------------------

def latest_checkpoint_made(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """(size, made_at ISO time) of the newest checkpoint, if any."""
    row = conn.execute("SELECT size, made_at FROM audit_checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else None


def count_event(conn: sqlite3.Connection, event: str, start: int, end: int) -> int:
    """Entries of ``event`` with an index in [start, end). The event column has no index, so a
    caller that counts often counts only the entries appended since it last counted."""
    return int(conn.execute("SELECT COUNT(*) FROM audit_entries WHERE idx >= ? AND idx < ? AND event = ?",
                            (start, end, event)).fetchone()[0])
