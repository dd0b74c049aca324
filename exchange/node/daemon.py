"""``exchange run``: the node's loop. Take in a window of envelopes, record them in one
transaction, ack the window; publish what the outbox holds, retransmit what has no receipt,
give up at the bound; hand incoming dossiers to the agency system; checkpoint the audit log.

Ordering is the backbone: an incoming message is acked only after the transaction that records
it commits; an outgoing one is marked published only after the broker confirmed it; a file for
the agency system appears only after its delivery is recorded. So a crash at any point loses
nothing, and a redelivery (which the de-duplication record recognizes) delivers nothing twice.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from exchange.adapters.dropfolder import DropFolder
from exchange.adapters.http_api import ApiServer
from exchange.adapters.webhooks import Webhooks
from exchange.audit.entries import Entry, Event
from exchange.codes import AgencyCode
from exchange.errors import RuleError, StaleDelivery, TransportError, Unroutable
from exchange.files import write_atomic
from exchange.node.context import NodeContext
from exchange.node.transport import Consumer, Delivery, Message, Transport
from exchange.node.workflow import Handled, delivery_dir, receive_batch
from exchange.store.node import OutboxRow

log = structlog.get_logger(__name__)

WINDOW = 64
"""Envelopes verified and committed together, and acked with one frame."""
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 600.0
MAX_ATTEMPTS = 10
"""About an hour and a half of retransmissions before a transfer is dead-lettered and alerted."""
HOUSEKEEPING_S = 0.5
"""Deliveries retried, checkpoints considered, gauges and the watchdog refreshed this often."""
FAULT_ENV = "EXCHANGE_FAULT"
"""Test hook: the name of a point at which the process kills itself (crash tests)."""


def backoff(attempts: int) -> float:
    """Seconds before retransmission number ``attempts``: exponential, capped, with jitter."""
    base = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not cryptography


def fault(point: str) -> None:
    """Crash tests set EXCHANGE_FAULT to die at the worst moment; nothing else does."""
    if os.environ.get(FAULT_ENV) == point:
        log.warning("fault.injected", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter("exchange_envelopes_received", "Envelopes taken in, by outcome", ["outcome"],
                                registry=r)
        self.published = Counter("exchange_envelopes_published", "Envelopes published, by kind", ["kind"],
                                 registry=r)
        self.retransmitted = Counter("exchange_retransmissions", "Envelopes published again", registry=r)
        self.dead = Counter("exchange_dead_lettered", "Transfers given up after the retry bound", registry=r)
        self.delivered = Counter("exchange_delivered", "Files handed to the agency system", registry=r)
        self.outbox = Gauge("exchange_outbox", "Outbox rows by state", ["state"], registry=r)
        self.audit = Gauge("exchange_audit_entries", "Entries in the audit log", registry=r)
        self.healthy = Gauge("exchange_healthy", "1 when the node works", registry=r)


class Daemon:
    """One node: a loop over inbound, outbound, delivery and checkpoints, until told to stop."""

    def __init__(self, ctx: NodeContext, transport: Transport, *, window: int = WINDOW) -> None:
        self.ctx = ctx
        self.transport = transport
        self.window = window
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self.healthy = True
        self._terms = 0
        self._housekept = 0.0
        self.dropfolder = DropFolder(ctx.config.dropfolder_dir)
        self.webhooks = Webhooks(ctx.config.webhook, ctx.config.token) if ctx.config.webhook else None
        Webhooks.create(ctx.store.conn)
        self.consumer: Consumer | None = None

    # lifecycle

    def run(self) -> int:
        self._signals()
        self._recover_deliveries()
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.NODE_STARTED, detail={"rules": self.ctx.rules.digest}))
        self.transport.declare(self.ctx.agency)
        self.consumer = self.transport.consume(self.ctx.agency, prefetch=self.window * 2)
        self._gauges()
        self._serve_metrics()
        api = self._serve_api()
        notify("READY=1")
        log.info("node.started", agency=str(self.ctx.agency), rules=self.ctx.rules.digest[:12])
        try:
            while not self.stopping.is_set():
                self.tick()
        finally:
            if api is not None:
                api.shutdown()
            self._shutdown()
        return 0

    def _serve_api(self) -> ApiServer | None:
        config = self.ctx.config
        if not config.http_port:
            return None
        api = ApiServer(config, config.token, config.http_host, config.http_port)
        api.start()
        return api

    def tick(self, wait: float = 0.05) -> None:
        """One pass: the outbox, an inbound window (waiting only when there is nothing to send),
        the receipts it produced, deliveries, and every half second the housekeeping."""
        assert self.consumer is not None
        sent = self.dispatch()
        if self.inbound(self.consumer, 0.0 if sent else wait):
            self.dispatch()
            self.deliver()
        now = time.monotonic()
        if now - self._housekept >= HOUSEKEEPING_S:
            self._housekept = now
            self.dropfolder.poll(self.ctx)  # a folder scan per half second, not per message window
            self.deliver()
            if self.webhooks is not None:
                self.webhooks.push(self.ctx)
            self._checkpoint()
            self._gauges()
            notify("WATCHDOG=1")

    def _shutdown(self) -> None:
        notify("STOPPING=1")
        if self.consumer is not None:
            self.consumer.close()
        self.dispatch()
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.NODE_STOPPED))
        self.ctx.checkpointer.make()
        self.transport.close()
        log.info("node.stopped", agency=str(self.ctx.agency))

    def _signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, lambda *_: self.reload())

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._terms += 1
        if self._terms > 1:
            log.warning("node.exit_now")
            os._exit(1)
        log.info("node.draining")
        self.stopping.set()

    def reload(self) -> bool:
        """Reload the rules; a bad edit keeps the rules in force and says why."""
        try:
            rules = self.ctx.rulebook.reload()
        except RuleError as exc:
            log.error("rules.reload_refused", problems=[str(p) for p in exc.problems][:20])
            return False
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.RULES_LOADED, detail={"digest": rules.digest}))
        log.info("rules.reloaded", digest=rules.digest[:12])
        return True

    # inbound

    def inbound(self, consumer: Consumer, wait: float) -> bool:
        deliveries = consumer.fetch(self.window, wait)
        if not deliveries:
            return False
        try:
            results = receive_batch(self.ctx, [(d.message.message_id, d.message.body) for d in deliveries])
        except Exception:  # noqa: BLE001 - one poison message must not stop the node: isolate it
            log.exception("inbound.window_failed", size=len(deliveries))
            results = [self._receive_alone(d) for d in deliveries]
        fault("after-commit-before-ack")
        accepted = [d for d, r in zip(deliveries, results, strict=True) if r.outcome != "refused"]
        try:
            if accepted:
                consumer.ack(accepted)
            for delivery, result in zip(deliveries, results, strict=True):
                self.metrics.received.labels(result.outcome).inc()
                if result.outcome == "refused":
                    consumer.dead_letter(delivery, result.reason)
        except StaleDelivery as exc:
            log.warning("inbound.stale_ack", error=str(exc))  # redelivered, and recognized as known
        return True

    def _receive_alone(self, delivery: Delivery) -> Handled:
        """One delivery in its own transaction; if it still fails, it is refused as an internal
        error, dead-lettered and audited, and the node goes on with the others."""
        try:
            return receive_batch(self.ctx, [(delivery.message.message_id, delivery.message.body)])[0]
        except Exception as exc:  # noqa: BLE001 - see inbound()
            log.exception("inbound.message_failed", message=delivery.message.message_id)
            reason = f"internal-error: {type(exc).__name__}: {exc}"[:500]
            with self.ctx.store.transaction():
                self.ctx.record(self.ctx.entry(Event.REFUSED, message_id=delivery.message.message_id,
                                                     detail={"reason": "internal-error", "text": reason[:300]}))
            return Handled("refused", reason)

    # outbound

    def dispatch(self, limit: int = 256) -> int:
        rows = self.ctx.store.due_outbox(limit)
        if not rows:
            return 0
        published, failed = self._publish(rows)
        now = time.time()
        with self.ctx.store.transaction() as conn:
            for row in published:
                self._mark_published(conn, row, now)
            for row, error in failed:
                self._mark_failed(conn, row, error, now)
        fault("after-publish-marked")
        return len(published)

    def _publish(self, rows: list[OutboxRow]) -> tuple[list[OutboxRow], list[tuple[OutboxRow, TransportError]]]:
        messages = [Message(AgencyCode(r.recipient), r.body, r.message_id, {"kind": r.kind}) for r in rows]
        try:
            self.transport.publish_many(messages)
            fault("after-publish-before-mark")
            return rows, []
        except TransportError:
            pass
        published: list[OutboxRow] = []
        failed: list[tuple[OutboxRow, TransportError]] = []
        for row, message in zip(rows, messages, strict=True):  # find which one failed
            try:
                self.transport.publish(message)
                published.append(row)
            except TransportError as exc:
                failed.append((row, exc))
        return published, failed

    def _mark_published(self, conn: object, row: OutboxRow, now: float) -> None:
        store = self.ctx.store
        attempts = row.attempts + 1
        final = row.kind == "receipt"
        state = "sent" if final else "published"
        store.conn.execute("UPDATE outbox SET state = CASE WHEN state IN ('pending', 'published') THEN ? "
                           "ELSE state END, attempts = ?, next_attempt = ? WHERE id = ?",
                           (state, attempts, now + backoff(attempts), row.id))
        self.metrics.published.labels(row.kind).inc()
        if final:
            return
        event = Event.PUBLISHED if attempts == 1 else Event.RETRANSMITTED
        if event is Event.RETRANSMITTED:
            self.metrics.retransmitted.inc()
        self.ctx.record(self._entry(event, row, {"attempt": str(attempts)}))
        if attempts >= MAX_ATTEMPTS:
            self._give_up(row, f"no receipt after {attempts} attempts")

    def _mark_failed(self, conn: object, row: OutboxRow, error: TransportError, now: float) -> None:
        store = self.ctx.store
        attempts = row.attempts + 1
        store.conn.execute("UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                           (attempts, now + backoff(attempts), str(error)[:500], row.id))
        if isinstance(error, Unroutable) or attempts >= MAX_ATTEMPTS:
            self._give_up(row, str(error))

    def _give_up(self, row: OutboxRow, reason: str) -> None:
        self.ctx.store.conn.execute("UPDATE outbox SET state = 'dead', last_error = ? WHERE id = ?",
                                    (reason[:500], row.id))
        self.ctx.record(self._entry(Event.DEAD_LETTERED, row, {"reason": reason[:300]}))
        self.metrics.dead.inc()
        log.error("transfer.dead_lettered", message=row.message_id, recipient=row.recipient,
                  dossier=row.dossier, reason=reason)

    def _entry(self, event: Event, row: OutboxRow, detail: dict[str, str]) -> Entry:
        return self.ctx.entry(event, dossier=row.dossier, step=row.step, message_id=row.message_id,
                              counterpart=row.recipient, envelope_sha256=row.envelope_sha256,
                              detail=detail)

    # delivery to the agency system

    def deliver(self, limit: int = 256) -> int:
        """Hand recorded dossiers and statuses to the agency system, each exactly once: the file is
        written aside, its delivery committed, and only then renamed into the outbox folder."""
        target = delivery_dir(self.ctx.config)
        pending = target / ".pending"
        rows = self.ctx.store.conn.execute(
            "SELECT message_id, kind, dossier, step, payload, sender, envelope_sha256 FROM inbox "
            "WHERE delivered = 0 AND outcome = 'accepted' LIMIT ?", (limit,)).fetchall()
        if not rows:
            return 0
        names = []
        for message_id, kind, dossier, step, payload, _, _ in rows:
            names.append(f"{kind}-{dossier}-{step}-{message_id}.xml")
            write_atomic(pending / names[-1], bytes(payload), sync=False)
        os.sync()  # one flush for the window's files, before their delivery is recorded
        with self.ctx.store.transaction() as conn:
            for name, (message_id, _, dossier, step, _, sender, digest) in zip(names, rows, strict=True):
                conn.execute("UPDATE inbox SET delivered = 1 WHERE message_id = ?", (message_id,))
                self.ctx.record(self.ctx.entry(Event.DELIVERED, dossier=dossier, step=step,
                                                     message_id=message_id, counterpart=sender,
                                                     envelope_sha256=digest, detail={"file": name}))
                if self.webhooks is not None:
                    Webhooks.enqueue(conn, message_id)
        fault("after-deliver-commit")
        for name in names:
            (pending / name).replace(target / name)
        _sync_dir(target)
        self.metrics.delivered.inc(len(names))
        return len(rows)

    def _recover_deliveries(self) -> None:
        """After a crash: files whose delivery was committed but not yet renamed are renamed now."""
        pending = delivery_dir(self.ctx.config) / ".pending"
        if not pending.is_dir():
            return
        for path in pending.glob("*.xml"):
            message_id = path.stem.rsplit("-", 5)[-5:]
            row = self.ctx.store.conn.execute("SELECT delivered FROM inbox WHERE message_id = ?",
                                              ("-".join(message_id),)).fetchone()
            if row and row[0]:
                path.replace(path.parent.parent / path.name)

    # checkpoints, metrics, health

    def _checkpoint(self) -> None:
        try:
            self.ctx.checkpointer.maybe()
        except Exception as exc:  # noqa: BLE001 - a checkpoint must never stop traffic
            log.error("audit.checkpoint_error", error=repr(exc))

    def _gauges(self) -> None:
        counts = self.ctx.store.counts()
        for state in ("pending", "published", "acknowledged", "sent", "dead", "refused"):
            self.metrics.outbox.labels(state).set(counts.get(f"outbox_{state}", 0))
        self.metrics.audit.set(self.ctx.audit.size)
        self.metrics.healthy.set(1 if self.healthy else 0)

    def _serve_metrics(self) -> None:
        port = self.ctx.config.metrics_port
        if port:
            start_http_server(port, addr="127.0.0.1", registry=self.metrics.registry)
            log.info("metrics.listening", port=port)


def _sync_dir(path: Path) -> None:
    """Make the renames durable: fsync the directory that holds them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def notify(state: str) -> None:
    """systemd's sd_notify, for Type=notify units with a watchdog; a no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))


__all__ = ["Daemon", "Delivery", "backoff", "notify"]
