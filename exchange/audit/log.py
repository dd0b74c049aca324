"""The audit log: canonical entries in an RFC 9162 Merkle tree, inside the node's SQLite database.

An entry is appended in the caller's transaction, so it commits together with the state change
it records, or not at all. The hash of every complete aligned subtree is stored as it completes,
so appending costs amortized O(1) and the root and every proof O(log n) lookups. The database's
triggers make the tables append-only (``exchange.store.schema``); the SQL is in
``exchange.store.audit``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator

from exchange import clock
from exchange.audit import merkle
from exchange.audit.entries import Entry
from exchange.errors import AuditError, LogDamaged
from exchange.store import audit as rows
from exchange.store import schema


def stored_tree(conn: sqlite3.Connection) -> merkle.SubtreeHashes:
    """The tree over a database's stored subtree hashes; a missing one raises LogDamaged."""

    def perfect(level: int, index: int) -> bytes:
        value = rows.subtree(conn, level, index)
        if value is None:
            raise LogDamaged(f"the tree has no subtree at level {level} index {index}: damaged")
        return value

    return merkle.SubtreeHashes(perfect)


class AuditLog:
    """The audit tree of one node, over a connection the caller owns (and commits).

    Constructed on a connection outside a transaction, it migrates the database first; inside
    one, the database must already be migrated.
    """

    def __init__(self, conn: sqlite3.Connection, node: str) -> None:
        if conn.in_transaction and schema.version(conn) < schema.VERSION:
            raise AuditError("the database is not migrated: open the audit log outside a transaction")
        schema.migrate(conn)
        self.conn = conn
        self.node = node
        self.tree = stored_tree(conn)

    @property
    def size(self) -> int:
        return rows.next_index(self.conn)

    def append(self, entry: Entry) -> int:
        """Append in the current transaction; return the entry's index. The caller commits."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[Entry]) -> list[int]:
        """Append a batch in the current transaction, with one read of the tree's right edge."""
        size = self.size
        edge = self._right_edge(size)
        indexes, new_entries, nodes = [], [], []
        for entry in entries:
            data = entry.encode(size)
            new_entries.append(rows.EntryRow(size, data, entry.event.value, clock.utc(entry.time),
                                             entry.dossier, entry.message_id))
            nodes.extend(_finish(edge, size, merkle.leaf_hash(data)))
            indexes.append(size)
            size += 1
        rows.append(self.conn, new_entries, nodes)
        return indexes

    def _right_edge(self, size: int) -> dict[int, bytes]:
        """The complete subtrees that a new leaf at ``size`` may merge with, by level."""
        edge = {}
        for level in range(size.bit_length()):
            if size >> level & 1:
                edge[level] = self.tree.perfect(level, (size >> level) - 1)
        return edge

    def root(self, size: int | None = None) -> bytes:
        return self.tree.root(self.size if size is None else size)

    def leaf(self, index: int) -> bytes:
        return self.tree.perfect(0, index)

    def entry(self, index: int) -> bytes:
        data = rows.entry(self.conn, index)
        if data is None:
            raise AuditError(f"no entry {index}")
        return data

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        return rows.entries(self.conn, start)

    def dossier_entries(self, dossier: str) -> list[tuple[int, bytes]]:
        return rows.dossier_entries(self.conn, dossier)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.tree.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.tree.consistency_proof(old, new)


def _finish(edge: dict[int, bytes], index: int, leaf: bytes) -> list[rows.NodeRow]:
    """Rows for the leaf at ``index`` and every subtree it completes; updates ``edge``."""
    nodes = [rows.NodeRow(0, index, leaf)]
    level, current = 0, leaf
    while index >> level & 1:
        current = merkle.node_hash(edge.pop(level), current)
        level += 1
        nodes.append(rows.NodeRow(level, index >> level, current))
    edge[level] = current
    return nodes
