"""The node's state beside its audit log, in the same SQLite database: outbox, inbox (the
de-duplication record), dossiers and their steps. Every change here commits in one transaction
with the audit entry that records it (``Store.transaction``)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exchange.store import db, schema


@dataclass(frozen=True)
class OutboxRow:
    id: int
    message_id: str
    recipient: str
    kind: str
    dossier: str | None
    step: str | None
    body: bytes
    envelope_sha256: str
    state: str
    attempts: int


class Store:
    """One node's database: its state tables and its audit log, on one connection."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn: sqlite3.Connection = db.connect(path)
        schema.migrate(self.conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: state and its audit entries commit together or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()

    # outbox

    def enqueue(self, message_id: str, recipient: str, kind: str, dossier: str | None, step: str | None,
                body: bytes, envelope_sha256: str) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT INTO outbox (message_id, recipient, kind, dossier, step, body, envelope_sha256, next_attempt, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, recipient, kind, dossier, step, body, envelope_sha256, now, now))

    def due_outbox(self, limit: int) -> list[OutboxRow]:
        rows = self.conn.execute(
            "SELECT id, message_id, recipient, kind, dossier, step, body, envelope_sha256, state, attempts "
            "FROM outbox WHERE state IN ('pending', 'published') AND next_attempt <= ? ORDER BY id LIMIT ?",
            (time.time(), limit)).fetchall()
        return [OutboxRow(*row) for row in rows]

    def outbox_by_message(self, message_id: str) -> OutboxRow | None:
        row = self.conn.execute(
            "SELECT id, message_id, recipient, kind, dossier, step, body, envelope_sha256, state, attempts "
            "FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
        return OutboxRow(*row) if row else None

    # inbox

    def known(self, message_id: str) -> tuple[str, str | None] | None:
        """(outcome, receipt message id) of a message already recorded, else None."""
        row = self.conn.execute("SELECT outcome, receipt_id FROM inbox WHERE message_id = ?",
                                (message_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def counts(self) -> dict[str, int]:
        """Gauges for metrics and the health check."""
        result = {f"outbox_{state}": n for state, n in
                  self.conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state")}
        result["inbox_undelivered"] = self.conn.execute(
            "SELECT COUNT(*) FROM inbox WHERE delivered = 0 AND outcome = 'accepted'").fetchone()[0]
        return result

    def close(self) -> None:
        self.conn.close()
