"""Webhooks: push each incoming dossier and status update to the agency system's URL.

A webhook is queued in the same transaction that records the delivery, retried with bounded
exponential backoff while the agency system is down, recorded in the audit log when it lands,
and dead-lettered (logged and audited) at the bound. The standard library's HTTP client is
enough for one POST of JSON to a configured local URL.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import structlog

from exchange.audit.entries import Event
from exchange.errors import ConfigError
from exchange.node.context import NodeContext

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    message_id TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT
);
"""
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 300.0
MAX_ATTEMPTS = 12
TIMEOUT_S = 10.0


def backoff(attempts: int) -> float:
    return float(min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1)) * random.uniform(0.8, 1.2))  # noqa: S311


@dataclass
class Webhooks:
    url: str
    token: str = ""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL {self.url!r}: expected http:// or https://")

    @staticmethod
    def create(conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)

    @staticmethod
    def enqueue(conn: sqlite3.Connection, message_id: str) -> None:
        """Queue a push, in the caller's transaction (the one that records the delivery)."""
        conn.execute("INSERT OR IGNORE INTO webhooks (message_id, next_attempt) VALUES (?, ?)",
                     (message_id, time.time()))

    def push(self, ctx: NodeContext, now: float | None = None, limit: int = 50) -> int:
        """Push what is due; returns how many landed."""
        conn = ctx.store.conn
        rows = conn.execute(
            "SELECT w.message_id, w.attempts, i.kind, i.dossier, i.step, i.sender, i.payload, i.envelope_sha256 "
            "FROM webhooks w JOIN inbox i ON i.message_id = w.message_id "
            "WHERE w.state = 'pending' AND w.next_attempt <= ? ORDER BY w.next_attempt LIMIT ?",
            (time.time() if now is None else now, limit)).fetchall()
        landed = 0
        for message_id, attempts, kind, dossier, step, sender, payload, digest in rows:
            error = self._post({"kind": kind, "dossier": dossier, "step": step, "from": sender,
                                "message_id": message_id, "payload": bytes(payload).decode("utf-8")})
            landed += self._record(ctx, message_id, attempts + 1, error, (dossier, step, sender, digest))
        return landed

    def _post(self, document: dict[str, object]) -> str | None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked at construction
            self.url, data=json.dumps(document, ensure_ascii=False).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - a configured URL
                response.read()
                return None
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))

    def _record(self, ctx: NodeContext, message_id: str, attempts: int, error: str | None,
                about: tuple[str, str, str, str]) -> int:
        dossier, step, sender, digest = about
        with ctx.store.transaction() as conn:
            if error is None:
                conn.execute("UPDATE webhooks SET state = 'done', attempts = ? WHERE message_id = ?",
                             (attempts, message_id))
                ctx.record(ctx.entry(Event.DELIVERED, dossier=dossier, step=step, message_id=message_id,
                                           counterpart=sender, envelope_sha256=digest,
                                           detail={"via": "webhook", "attempt": str(attempts)}))
                return 1
            dead = attempts >= MAX_ATTEMPTS
            conn.execute("UPDATE webhooks SET state = ?, attempts = ?, next_attempt = ?, last_error = ? "
                         "WHERE message_id = ?", ("dead" if dead else "pending", attempts,
                                                   time.time() + backoff(attempts), error, message_id))
            if dead:
                ctx.record(ctx.entry(Event.DEAD_LETTERED, dossier=dossier, step=step, message_id=message_id,
                                           counterpart=sender, detail={"via": "webhook", "reason": error}))
                log.error("webhook.dead_lettered", message=message_id, error=error)
            else:
                log.warning("webhook.retry", message=message_id, attempt=attempts, error=error)
        return 0
