"""The outbox's dispatcher: publish what is due with publisher confirms, and only then mark it.

A row is marked published only after the broker confirmed it, so a crash in between publishes
the same envelope again, which its receiver recognizes. A transfer stays due until its receipt
settles it: it is retransmitted on ``TRANSFER_RETRANSMISSION``'s backoff and, when its last
publication brought no receipt either, given up (dead-lettered, audited, logged as an error). A
receipt is sent once: nothing answers it.

Only confirmed publications count as attempts, and the audit log says ``published`` for the first
of them: a publication that failed (the broker down, a nack) is retried on ``PUBLISH_FAILURE``'s
short backoff and leaves no entry. An outage therefore never spends a transfer's bound nor
dead-letters a receipt; only an error about the one message (no queue for its recipient, a nack
repeated ``PUBLISH_FAILURE.attempts`` times) does.

A batch that fails because the transport is unavailable marks all its rows failed at once,
without a second try per row (which would wait once per row), and the loop learns of the outage
(``dispatch_or_raise``) to back off; only errors about one message are told apart row by row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from exchange.audit.entries import Entry, Event
from exchange.codes import AgencyCode
from exchange.envelope.model import Kind
from exchange.errors import PublishRejected, TransportError, TransportUnavailable, Unroutable
from exchange.node.context import NodeContext
from exchange.node.faults import fault
from exchange.node.metrics import Metrics
from exchange.node.transport import Message, Transport
from exchange.retry import PUBLISH_FAILURE, TRANSFER_RETRANSMISSION
from exchange.store.node import OutboxRow
from exchange.store.states import OutboxState

log = structlog.get_logger(__name__)

Failure = tuple[OutboxRow, TransportError]


@dataclass
class Dispatcher:
    ctx: NodeContext
    transport: Transport
    metrics: Metrics
    outage: TransportUnavailable | None = field(default=None, init=False)
    """The unavailability the last publication met, if any (its rows were marked failed together)."""

    def dispatch_or_raise(self, limit: int = 256) -> int:
        """``dispatch``, then raise the TransportUnavailable it met, once its rows are marked
        failed, so that the loop backs off instead of trying the transport again at once."""
        self.outage = None
        published = self.dispatch(limit)
        if self.outage is not None:
            raise self.outage
        return published

    def dispatch(self, limit: int = 256) -> int:
        """Publish up to ``limit`` due rows and record the outcome in one transaction; returns how
        many the broker confirmed."""
        rows = self.ctx.store.due_outbox(limit)
        if not rows:
            return 0
        spent = [r for r in rows if r.kind != Kind.RECEIPT and TRANSFER_RETRANSMISSION.exhausted(r.attempts)]
        due = [r for r in rows if r.kind == Kind.RECEIPT or not TRANSFER_RETRANSMISSION.exhausted(r.attempts)]
        published, failed = self._publish(due) if due else ([], [])
        now = time.time()
        with self.ctx.store.transaction():
            for row in spent:
                self._give_up(row, f"no receipt after {row.attempts} publications")
            for row in published:
                self._published(row, now)
            for row, error in failed:
                self._failed(row, error, now)
        fault("after-publish-marked")
        return len(published)

    def _publish(self, rows: list[OutboxRow]) -> tuple[list[OutboxRow], list[Failure]]:
        """All at once; if that fails for one message's sake, one by one, to tell which ones the
        broker refuses. An unavailable transport fails every row not yet published, at once."""
        messages = [Message(AgencyCode(r.recipient), r.body, r.message_id, {"kind": r.kind}) for r in rows]
        try:
            self.transport.publish_many(messages)
            fault("after-publish-before-mark")
            return rows, []
        except TransportUnavailable as exc:
            self.outage = exc
            return [], [(row, exc) for row in rows]
        except TransportError:
            pass
        published: list[OutboxRow] = []
        failed: list[Failure] = []
        for index, (row, message) in enumerate(zip(rows, messages, strict=True)):
            try:
                self.transport.publish(message)
                published.append(row)
            except TransportUnavailable as exc:
                self.outage = exc
                failed.extend((rest, exc) for rest in rows[index:])
                break
            except TransportError as exc:
                failed.append((row, exc))
        return published, failed

    def _published(self, row: OutboxRow, now: float) -> None:
        attempt = row.attempts + 1
        final = row.kind == Kind.RECEIPT  # nothing answers a receipt
        state = OutboxState.SENT if final else OutboxState.PUBLISHED
        self.ctx.store.mark_published(row.id, state, attempt, now + TRANSFER_RETRANSMISSION.delay(attempt))
        self.metrics.published.labels(row.kind).inc()
        if final:
            return
        event = Event.PUBLISHED if attempt == 1 else Event.RETRANSMITTED
        if event is Event.RETRANSMITTED:
            self.metrics.retransmitted.inc()
        self.ctx.record(self._entry(event, row, {"attempt": str(attempt)}))

    def _failed(self, row: OutboxRow, error: TransportError, now: float) -> None:
        failures = row.failures + 1
        self.ctx.store.mark_failed(row.id, failures, now + PUBLISH_FAILURE.delay(failures), str(error))
        about_the_message = isinstance(error, Unroutable | PublishRejected)
        if isinstance(error, Unroutable) or (about_the_message and PUBLISH_FAILURE.exhausted(failures)):
            self._give_up(row, str(error))

    def _give_up(self, row: OutboxRow, reason: str) -> None:
        self.ctx.store.mark_dead(row.id, reason)
        self.ctx.record(self._entry(Event.DEAD_LETTERED, row, {"reason": reason[:300]}))
        self.metrics.dead.inc()
        log.error("transfer.dead_lettered", message=row.message_id, recipient=row.recipient,
                  dossier=row.dossier, reason=reason)

    def _entry(self, event: Event, row: OutboxRow, detail: dict[str, str]) -> Entry:
        return self.ctx.entry(event, dossier=row.dossier, step=row.step, message_id=row.message_id,
                              counterpart=row.recipient, envelope_sha256=row.envelope_sha256,
                              detail=detail)
