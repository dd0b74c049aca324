"""The node's state tables, in the same SQLite database as its audit log: outbox, inbox (the
de-duplication record), dossiers, their steps and statuses, webhooks. Every statement about them
is here; callers get frozen rows and enum states. Every change commits in one transaction with
the audit entries that record it (``Store.transaction``)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from exchange.store import db, schema
from exchange.store.cipher import MAGIC, ColumnCipher, refuse_sealed, where
from exchange.store.states import DossierState, OutboxState, Outcome, StepState, WebhookState

_OUTBOX_COLUMNS = ("id, message_id, recipient, kind, dossier, step, body, envelope_sha256, state, attempts, "
                  "last_error, failures")


_PAYLOAD_COLUMNS = (("outbox", "body", "message_id"), ("inbox", "payload", "message_id"),
                    ("dossiers", "payload", "code"))
"""Where a node keeps what it holds of citizens' data: encrypted at rest with a storage key."""

CONFIG_MISMATCH = "config-mismatch"
"""The reason code of a refusal between nodes running different configuration bundles."""


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
    state: OutboxState
    attempts: int
    """Publications the broker confirmed."""
    last_error: str | None = None
    failures: int = 0
    """Publications that failed in a row since the last confirmed one."""

    @classmethod
    def of(cls, row: tuple[object, ...]) -> OutboxRow:
        values = list(row)
        values[8] = OutboxState(str(values[8]))
        return cls(*values)  # type: ignore[arg-type]


DOSSIER_COLUMNS = "code, procedure, origin, received_at, state, paused_days, paused_since"


@dataclass(frozen=True)
class DossierRow:
    code: str
    procedure: str
    origin: str
    received_at: str
    state: DossierState
    paused_days: int = 0
    """Working days the dossier's clock stood still so far (fees, supplements): its deadlines move by them."""
    paused_since: str | None = None
    """While the clock stands still: since when (ISO time)."""


@dataclass(frozen=True)
class StepRow:
    dossier: str
    step: str
    agency: str
    state: StepState
    due: str | None
    done_at: str | None
    result: str | None


@dataclass(frozen=True)
class StatusRow:
    dossier: str
    sender: str
    step: str | None
    exchange_status: str
    dossier_status: int
    at: str
    note: str | None


@dataclass(frozen=True)
class InboxRecord:
    """One incoming envelope as the inbox records it (its id is the de-duplication key)."""

    message_id: str
    sender: str
    kind: str
    dossier: str | None
    step: str | None
    envelope_sha256: str
    outcome: Outcome
    payload: bytes | None = None
    reason: str | None = None
    delivered: bool = False



@dataclass(frozen=True)
class PendingWebhook:
    """A webhook due to be pushed: the delivery it announces, and the attempts made so far."""

    inbox: InboxRecord
    attempts: int


class Store:
    """One node's state tables on one connection (the audit log shares it: see ``NodeContext``)."""

    def __init__(self, path: Path, cipher: ColumnCipher | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.cipher = cipher
        """With a storage key, the payload columns are encrypted at rest (``store/cipher.py``)."""
        self._after_commit: list[Callable[[], None]] = []
        self._learnt: set[tuple[str, str]] = set()
        """The (agency, fingerprint) of the peer certificates this store kept, once committed."""
        with db.translated(path):
            self.conn: sqlite3.Connection = db.connect(path)
            schema.migrate(self.conn)

    def _seal(self, value: bytes, table: str, column: str, key: str) -> bytes:
        return self.cipher.seal(value, where(table, column, key)) if self.cipher else value

    def _open(self, value: bytes, table: str, column: str, key: str) -> bytes:
        place = where(table, column, key)
        return self.cipher.open(value, place) if self.cipher else refuse_sealed(value, place)

    def _outbox_row(self, row: tuple[object, ...]) -> OutboxRow:
        values = list(row)
        values[6] = self._open(bytes(values[6]), "outbox", "body", str(values[1]))  # type: ignore[call-overload]
        return OutboxRow.of(tuple(values))

    def _accepted(self, row: tuple[str, str, str, str | None, str | None, str, bytes]) -> InboxRecord:
        record = _accepted(row)
        return replace(record, payload=self._open(record.payload or b"", "inbox", "payload", record.message_id))

    def seal_plaintext_rows(self) -> int:
        """Encrypt every payload written before the storage key was configured; how many rows."""
        if self.cipher is None:
            return 0
        sealed = 0
        with self.transaction() as conn:
            for table, column, key in _PAYLOAD_COLUMNS:
                rows = conn.execute(f"SELECT {key}, {column} FROM {table} "  # noqa: S608 - our own names
                                    f"WHERE {column} IS NOT NULL AND substr({column}, 1, 4) != ?",
                                    (MAGIC,)).fetchall()
                for row_key, value in rows:
                    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?",  # noqa: S608
                                 (self._seal(bytes(value), table, column, str(row_key)), row_key))
                sealed += len(rows)
        return sealed

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: state and its audit entries commit together or not at all. SQLite's
        errors leave as StoreBusy or StoreError, the change rolled back."""
        with db.translated(self.path):
            db.begin_immediate(self.conn)
            try:
                yield self.conn
            except BaseException:
                self.conn.rollback()
                self._after_commit.clear()
                raise
            self.conn.commit()
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the current transaction commits (never if it rolls back); the
        same callback asked for twice in one transaction runs once."""
        if callback not in self._after_commit:
            self._after_commit.append(callback)

    # outbox

    def enqueue(self, message_id: str, recipient: str, kind: str, dossier: str | None, step: str | None,
                body: bytes, envelope_sha256: str) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT INTO outbox (message_id, recipient, kind, dossier, step, body, envelope_sha256, next_attempt, "
            "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, recipient, kind, dossier, step, self._seal(body, "outbox", "body", message_id),
             envelope_sha256, now, now))

    def due_outbox(self, limit: int) -> list[OutboxRow]:
        rows = self.conn.execute(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state IN (?, ?) AND next_attempt <= ? "  # noqa: S608
            "ORDER BY id LIMIT ?", (*OutboxState.due(), time.time(), limit)).fetchall()
        return [self._outbox_row(row) for row in rows]

    def outbox_by_message(self, message_id: str) -> OutboxRow | None:
        row = self.conn.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE message_id = ?",  # noqa: S608
                                (message_id,)).fetchone()
        return self._outbox_row(row) if row else None

    def dead_outbox(self) -> list[OutboxRow]:
        rows = self.conn.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = ? ORDER BY id",  # noqa: S608
                                 (OutboxState.DEAD,)).fetchall()
        return [self._outbox_row(row) for row in rows]

    def settle(self, row_id: int, state: OutboxState) -> None:
        """A receipt came: the transfer is acknowledged or refused, unless already settled."""
        self.conn.execute("UPDATE outbox SET state = ? WHERE id = ? AND state IN (?, ?)",
                          (state, row_id, *OutboxState.due()))

    def republish(self, message_id: str) -> None:
        """Due again at once, with a fresh retry budget: an operator's replay of a dead letter."""
        self.conn.execute("UPDATE outbox SET state = ?, attempts = 0, failures = 0, next_attempt = 0 "
                          "WHERE message_id = ?", (OutboxState.PENDING, message_id))

    def wait_for_configuration(self, row_id: int, next_attempt: float, reason: str) -> None:
        """The recipient refused the transfer because it runs another configuration bundle: it is
        due again later, and at once when this node applies a new bundle."""
        marked = f"{CONFIG_MISMATCH}: {reason}"[:500]
        self.conn.execute("UPDATE outbox SET state = ?, next_attempt = ?, last_error = ? "
                          "WHERE id = ? AND state IN (?, ?)",
                          (OutboxState.PENDING, next_attempt, marked, row_id, *OutboxState.due()))

    def due_now_for_configuration(self) -> int:
        """A new bundle is in force: the transfers refused for a configuration mismatch go again now."""
        return self.conn.execute("UPDATE outbox SET next_attempt = 0 WHERE state = ? AND last_error LIKE ?",
                                 (OutboxState.PENDING, f"{CONFIG_MISMATCH}:%")).rowcount

    def learnt_certificate(self, agency: str, fingerprint: str) -> bool:
        """Whether this store already kept (and committed) that certificate of ``agency``: a peer
        signs thousands of envelopes with one, and each would otherwise be written again."""
        return (agency, fingerprint) in self._learnt

    def learn_certificate(self, agency: str, der: bytes, not_after: float, fingerprint: str | None = None) -> None:
        """A peer's certificate (verified by the caller): kept unless a later-expiring one is known.
        ``fingerprint``: its SHA-256 (hex), when the caller has it already."""
        learnt = (agency, fingerprint or hashlib.sha256(der).hexdigest())
        self.after_commit(functools.partial(self._learnt.add, learnt))
        self.conn.execute("INSERT INTO peer_certificates (agency, certificate, not_after, learnt_at) "
                          "VALUES (?, ?, ?, ?) ON CONFLICT (agency) DO UPDATE SET certificate = excluded.certificate, "
                          "not_after = excluded.not_after, learnt_at = excluded.learnt_at "
                          "WHERE excluded.not_after > peer_certificates.not_after",
                          (agency, der, not_after, time.time()))

    def peer_certificate(self, agency: str, now: float) -> bytes | None:
        """The certificate (DER) to encrypt to ``agency``, if one still valid is known."""
        row = self.conn.execute("SELECT certificate FROM peer_certificates WHERE agency = ? AND not_after > ?",
                                (agency, now)).fetchone()
        return bytes(row[0]) if row else None

    def due_now_after_failures(self) -> None:
        """The transport is back: every row whose publications failed is due at once, not at the
        end of its backoff."""
        self.conn.execute("UPDATE outbox SET next_attempt = 0 WHERE failures > 0 AND state IN (?, ?)",
                          OutboxState.due())

    def resend_receipt(self, message_id: str) -> bool:
        """A receipt asked for again (its envelope came again): due at once if it was sent or is on
        its way. A dead receipt stays dead: only an operator's replay brings it back, audited."""
        return self.conn.execute(
            "UPDATE outbox SET state = ?, failures = 0, next_attempt = 0 WHERE message_id = ? AND kind = ? "
            "AND state IN (?, ?)", (OutboxState.PENDING, message_id, "receipt", OutboxState.PENDING,
                                    OutboxState.SENT)).rowcount > 0

    # inbox

    def known(self, message_id: str, digest: str | None = None) -> tuple[Outcome, str | None] | None:
        """(outcome, receipt message id) of a message already recorded, else None. Given the
        ``digest`` of the copy at hand, a refusal recorded for other bytes is not this copy: a
        refusal binds to the bytes it refused, so the genuine copy of a tampered one is new."""
        row = self.conn.execute("SELECT outcome, receipt_id, envelope_sha256 FROM inbox WHERE message_id = ?",
                                (message_id,)).fetchone()
        if row is None or (digest is not None and row[0] == Outcome.REFUSED and row[2] != digest):
            return None
        return Outcome(row[0]), row[1]

    def recorded_copy(self, message_id: str) -> tuple[str, str | None] | None:
        """(SHA-256 of the bytes recorded, receipt message id) of an inbox message, else None: the
        bytes were verified when they were taken in."""
        row = self.conn.execute("SELECT envelope_sha256, receipt_id FROM inbox WHERE message_id = ?",
                                (message_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def record_inbox(self, record: InboxRecord, received_at: float) -> None:
        """Record an envelope; it replaces a refusal recorded for other bytes of the same message."""
        self.conn.execute("DELETE FROM inbox WHERE message_id = ? AND outcome = ? AND envelope_sha256 != ?",
                          (record.message_id, Outcome.REFUSED, record.envelope_sha256))
        self.conn.execute(
            "INSERT INTO inbox (message_id, sender, kind, dossier, step, envelope_sha256, received_at, outcome, "
            "reason, payload, delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.message_id, record.sender, record.kind, record.dossier, record.step, record.envelope_sha256,
             received_at, record.outcome, record.reason,
             None if record.payload is None else self._seal(record.payload, "inbox", "payload", record.message_id),
             int(record.delivered or record.outcome is not Outcome.ACCEPTED)))

    def set_receipt(self, message_ids: Iterable[str], receipt_id: str) -> None:
        self.conn.executemany("UPDATE inbox SET receipt_id = ? WHERE message_id = ?",
                              [(receipt_id, message_id) for message_id in message_ids])

    # dossiers

    def dossier(self, code: str) -> DossierRow | None:
        row = self.conn.execute(f"SELECT {DOSSIER_COLUMNS} FROM dossiers WHERE code = ?", (code,)).fetchone()  # noqa: S608
        return _dossier(row) if row else None

    def dossiers(self, code: str | None = None, state: DossierState | None = None) -> list[DossierRow]:
        """Every dossier at this node by code, or the one named, or those in ``state``."""
        query, params = f"SELECT {DOSSIER_COLUMNS} FROM dossiers", []  # noqa: S608
        if code is not None:
            query, params = query + " WHERE code = ?", [code]
        elif state is not None:
            query, params = query + " WHERE state = ?", [state]
        rows = self.conn.execute(query + " ORDER BY code", params).fetchall()
        return [_dossier(row) for row in rows]

    def dossier_payload(self, code: str) -> bytes | None:
        row = self.conn.execute("SELECT payload FROM dossiers WHERE code = ?", (code,)).fetchone()
        return self._open(bytes(row[0]), "dossiers", "payload", code) if row else None

    def add_dossier(self, row: DossierRow, payload: bytes) -> None:
        self.conn.execute("INSERT INTO dossiers (code, procedure, origin, received_at, state, payload, updated) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (row.code, row.procedure, row.origin, row.received_at, row.state,
                           self._seal(payload, "dossiers", "payload", row.code), time.time()))

    def replace_payload(self, code: str, payload: bytes) -> None:
        self.conn.execute("UPDATE dossiers SET payload = ?, updated = ? WHERE code = ?",
                          (self._seal(payload, "dossiers", "payload", code), time.time(), code))

    def set_dossier_state(self, code: str, state: DossierState) -> None:
        self.conn.execute("UPDATE dossiers SET state = ?, updated = ? WHERE code = ?", (state, time.time(), code))

    def pause(self, code: str, state: DossierState, since: str) -> None:
        """The dossier's clock stops (``state`` says why); a clock already stopped keeps its start."""
        self.conn.execute("UPDATE dossiers SET state = ?, paused_since = COALESCE(paused_since, ?), updated = ? "
                          "WHERE code = ?", (state, since, time.time(), code))

    def resume(self, code: str, days: int) -> None:
        """The clock runs again after standing still ``days`` working days."""
        self.conn.execute("UPDATE dossiers SET state = ?, paused_days = paused_days + ?, paused_since = NULL, "
                          "updated = ? WHERE code = ?", (DossierState.PROCESSING, days, time.time(), code))

    # steps

    def steps(self, dossier: str) -> list[StepRow]:
        """A dossier's steps known here, in the order this node learnt of them."""
        rows = self.conn.execute("SELECT dossier, step, agency, state, due, done_at, result FROM steps "
                                 "WHERE dossier = ? ORDER BY rowid", (dossier,)).fetchall()
        return [_step(row) for row in rows]

    def step(self, dossier: str, step: str) -> StepRow | None:
        row = self.conn.execute("SELECT dossier, step, agency, state, due, done_at, result FROM steps "
                                "WHERE dossier = ? AND step = ?", (dossier, step)).fetchone()
        return _step(row) if row else None

    def ready_steps(self, agency: str) -> list[StepRow]:
        """The steps ``agency`` can do now, oldest dossier first."""
        rows = self.conn.execute("SELECT dossier, step, agency, state, due, done_at, result FROM steps "
                                 "WHERE agency = ? AND state = ? ORDER BY dossier, rowid",
                                 (agency, StepState.READY)).fetchall()
        return [_step(row) for row in rows]

    def overdue_steps(self, today: str) -> list[StepRow]:
        """Steps ready and past their due date (ISO dates compare as text): the one definition of
        overdue, behind the status command, the HTTP API and the demo alike."""
        rows = self.conn.execute("SELECT dossier, step, agency, state, due, done_at, result FROM steps "
                                 "WHERE state = ? AND due IS NOT NULL AND due < ? ORDER BY due, dossier",
                                 (StepState.READY, today)).fetchall()
        return [_step(row) for row in rows]

    def done_steps(self, dossier: str) -> dict[str, str]:
        """Each done step of a dossier and when it was done (ISO text)."""
        # ``+state``: not a term an index may serve. Without it SQLite searches steps_by_state_due
        # for every done step of every dossier (a scan that grows with the node's history)
        # rather than the dossier's few steps by its key.
        rows = self.conn.execute("SELECT step, done_at FROM steps WHERE dossier = ? AND +state = ?",
                                 (dossier, StepState.DONE))
        return {step: at for step, at in rows}

    def add_steps(self, dossier: str, agencies: Iterable[tuple[str, str]]) -> None:
        """Steps not yet known here, as pending, each with its performing agency."""
        self.conn.executemany("INSERT OR IGNORE INTO steps (dossier, step, agency, state) VALUES (?, ?, ?, ?)",
                              [(dossier, step, agency, StepState.PENDING) for step, agency in agencies])

    def finish_step(self, dossier: str, step: str, agency: str, done_at: str, result: str | None = None) -> None:
        """A step done, here or (learnt from a hand-off) by the agency that sent the dossier on."""
        self.conn.execute("INSERT INTO steps (dossier, step, agency, state, done_at, result) VALUES (?, ?, ?, ?, ?, ?) "
                          "ON CONFLICT (dossier, step) DO UPDATE SET state = excluded.state, "
                          "done_at = excluded.done_at, result = COALESCE(excluded.result, steps.result)",
                          (dossier, step, agency, StepState.DONE, done_at, result))

    def hand_over(self, dossier: str, step: str, state: StepState) -> None:
        """Another agency's step moves on as this node sees it (sent, then received), never back
        from further along (done, cancelled)."""
        earlier = ((StepState.PENDING, StepState.WAITING, StepState.READY) if state is StepState.SENT
                   else (StepState.PENDING, StepState.SENT))
        marks = ", ".join("?" * len(earlier))
        self.conn.execute(f"UPDATE steps SET state = ? WHERE dossier = ? AND step = ? AND state IN ({marks})",  # noqa: S608
                          (state, dossier, step, *earlier))

    def cancel_steps(self, dossier: str) -> int:
        """The dossier ended: every step of it not done here is cancelled; returns how many."""
        return self.conn.execute("UPDATE steps SET state = ? WHERE dossier = ? AND state NOT IN (?, ?)",
                                 (StepState.CANCELLED, dossier, StepState.DONE, StepState.CANCELLED)).rowcount

    def wait(self, dossier: str, step: str) -> None:
        """A step stops for the applicant's supplement (done steps and cancelled ones stay as they are)."""
        self.conn.execute("UPDATE steps SET state = ? WHERE dossier = ? AND step = ? AND state NOT IN (?, ?)",
                          (StepState.WAITING, dossier, step, StepState.DONE, StepState.CANCELLED))

    def resume_step(self, dossier: str, step: str, due: str | None) -> None:
        """A step that waited for a supplement is ready again, due later by the days it waited."""
        self.conn.execute("UPDATE steps SET state = ?, due = ? WHERE dossier = ? AND step = ? AND state = ?",
                          (StepState.READY, due, dossier, step, StepState.WAITING))

    def set_due(self, dossier: str, step: str, due: str | None) -> None:
        """The due date this node knows for a step another agency performs (moved by a pause)."""
        self.conn.execute("UPDATE steps SET due = ? WHERE dossier = ? AND step = ?", (due, dossier, step))

    def make_ready(self, dossier: str, step: str, agency: str, due: str | None) -> None:
        """A pending (or new) step becomes ready with its due date; a step further along is left alone."""
        self.conn.execute("INSERT INTO steps (dossier, step, agency, state, due) VALUES (?, ?, ?, ?, ?) "
                          "ON CONFLICT (dossier, step) DO UPDATE SET state = excluded.state, due = excluded.due, "
                          "agency = excluded.agency WHERE steps.state = ?",
                          (dossier, step, agency, StepState.READY, due, StepState.PENDING))

    def reassign(self, dossier: str, step: str, agency: str) -> None:
        """A step not done yet goes to another agency (its agency was abolished: the successor)."""
        self.conn.execute("UPDATE steps SET agency = ? WHERE dossier = ? AND step = ? AND state NOT IN (?, ?)",
                          (agency, dossier, step, StepState.DONE, StepState.CANCELLED))

    # statuses

    def add_status(self, status: StatusRow) -> None:
        self.conn.execute("INSERT INTO statuses (dossier, sender, step, exchange_status, dossier_status, at, note) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (status.dossier, status.sender, status.step, status.exchange_status,
                           status.dossier_status, status.at, status.note))

    def statuses(self, dossier: str) -> list[StatusRow]:
        rows = self.conn.execute("SELECT dossier, sender, step, exchange_status, dossier_status, at, note "
                                 "FROM statuses WHERE dossier = ? ORDER BY rowid", (dossier,)).fetchall()
        return [StatusRow(*row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Gauges for metrics and the health check."""
        result = {f"outbox_{state}": n for state, n in
                  self.conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state")}
        result["inbox_undelivered"] = self.conn.execute(
            "SELECT COUNT(*) FROM inbox WHERE delivered = 0 AND outcome = ?", (Outcome.ACCEPTED,)).fetchone()[0]
        return result

    # the daemon's dispatcher, delivery and webhooks --------------------------------------

    def mark_published(self, row_id: int, state: OutboxState, attempts: int, next_attempt: float) -> None:
        """The broker confirmed a publication; a receipt that settled the row meanwhile is kept."""
        self.conn.execute("UPDATE outbox SET state = CASE WHEN state IN (?, ?) THEN ? ELSE state END, "
                          "attempts = ?, failures = 0, next_attempt = ? WHERE id = ?",
                          (*OutboxState.due(), state, attempts, next_attempt, row_id))

    def mark_failed(self, row_id: int, failures: int, next_attempt: float, error: str) -> None:
        """A publication failed; the row stays due at ``next_attempt``, its confirmed count unchanged."""
        self.conn.execute("UPDATE outbox SET failures = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                          (failures, next_attempt, error[:500], row_id))

    def mark_dead(self, row_id: int, reason: str) -> None:
        self.conn.execute("UPDATE outbox SET state = ?, last_error = ? WHERE id = ?",
                          (OutboxState.DEAD, reason[:500], row_id))

    def undelivered(self, limit: int) -> list[InboxRecord]:
        """Accepted envelopes not yet handed to the agency system, oldest first."""
        rows = self.conn.execute(
            "SELECT message_id, sender, kind, dossier, step, envelope_sha256, payload FROM inbox "
            "WHERE delivered = 0 AND outcome = ? ORDER BY received_at LIMIT ?", (Outcome.ACCEPTED, limit)).fetchall()
        return [self._accepted(row) for row in rows]

    def mark_delivered(self, message_id: str) -> None:
        self.conn.execute("UPDATE inbox SET delivered = 1 WHERE message_id = ?", (message_id,))

    def delivered(self, message_id: str) -> bool:
        """Whether the agency system's copy of this envelope was recorded as handed over."""
        row = self.conn.execute("SELECT delivered FROM inbox WHERE message_id = ?", (message_id,)).fetchone()
        return bool(row and row[0])

    def webhook_enqueue(self, message_id: str, at: float) -> None:
        """Queue a push (once per delivery), in the transaction that records the delivery."""
        self.conn.execute("INSERT OR IGNORE INTO webhooks (message_id, state, next_attempt) VALUES (?, ?, ?)",
                          (message_id, WebhookState.PENDING, at))

    def webhooks_due(self, now: float, limit: int) -> list[PendingWebhook]:
        rows = self.conn.execute(
            "SELECT i.message_id, i.sender, i.kind, i.dossier, i.step, i.envelope_sha256, i.payload, w.attempts "
            "FROM webhooks w JOIN inbox i ON i.message_id = w.message_id "
            "WHERE w.state = ? AND w.next_attempt <= ? ORDER BY w.next_attempt LIMIT ?",
            (WebhookState.PENDING, now, limit)).fetchall()
        return [PendingWebhook(self._accepted(row[:7]), int(row[7])) for row in rows]

    def webhook_backlog(self) -> int:
        """Webhook pushes not yet taken by the agency system (for ``exchange check``)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM webhooks WHERE state = ?",
                                     (WebhookState.PENDING,)).fetchone()[0])

    def webhook_done(self, message_id: str, attempts: int) -> None:
        self.conn.execute("UPDATE webhooks SET state = ?, attempts = ? WHERE message_id = ?",
                          (WebhookState.DONE, attempts, message_id))

    def webhook_retry(self, message_id: str, attempts: int, next_attempt: float, error: str, *,
                      dead: bool = False) -> None:
        """A push failed: due again at ``next_attempt``, or given up for good when ``dead``."""
        self.conn.execute("UPDATE webhooks SET state = ?, attempts = ?, next_attempt = ?, last_error = ? "
                          "WHERE message_id = ?", (WebhookState.DEAD if dead else WebhookState.PENDING,
                                                   attempts, next_attempt, error[:500], message_id))

    # counting queries for the metrics, run by the housekeeping every few seconds ------------

    def oldest_due_created(self) -> float | None:
        """When the oldest outgoing envelope still due (unconfirmed, or awaiting its receipt) was
        queued; None when none is. Reads the due rows only (the ``outbox_due`` index)."""
        row = self.conn.execute("SELECT MIN(created) FROM outbox WHERE state IN (?, ?)", OutboxState.due()).fetchone()
        return None if row[0] is None else float(row[0])

    def overdue_summary(self, today: str) -> tuple[int, str | None]:
        """(dossiers with a step ready here past its due date, the earliest such due date): the
        counting form of ``overdue_steps``, with the same definition."""
        count, earliest = self.conn.execute(
            "SELECT COUNT(DISTINCT dossier), MIN(due) FROM steps WHERE state = ? AND due IS NOT NULL AND due < ?",
            (StepState.READY, today)).fetchone()
        return int(count), earliest

    def close(self) -> None:
        self.conn.close()


def _accepted(row: tuple[str, str, str, str | None, str | None, str, bytes]) -> InboxRecord:
    """An accepted inbox row from (message_id, sender, kind, dossier, step, envelope_sha256, payload)."""
    message_id, sender, kind, dossier, step, digest, payload = row
    return InboxRecord(message_id, sender, kind, dossier, step, digest, Outcome.ACCEPTED, bytes(payload))


def _step(row: tuple[object, ...]) -> StepRow:
    dossier, step, agency, state, due, done_at, result = row
    return StepRow(str(dossier), str(step), str(agency), StepState(state), due, done_at, result)  # type: ignore[arg-type]


def _dossier(row: tuple[object, ...]) -> DossierRow:
    code, procedure, origin, received_at, state, paused_days, paused_since = row
    return DossierRow(str(code), str(procedure), str(origin), str(received_at), DossierState(str(state)),
                      int(paused_days), str(paused_since) if paused_since else None)  # type: ignore[call-overload]
