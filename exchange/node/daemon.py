"""``exchange run``: the node's loop. Take in a window of envelopes, record them in one
transaction, ack the window; publish what the outbox holds (``dispatcher``); hand incoming
dossiers to the agency system (``delivery``); let the doors poll; checkpoint the audit log.

Ordering is the backbone: an incoming message is acked only after the transaction that records
it commits; an outgoing one is marked published only after the broker confirmed it; a file for
the agency system appears only after its delivery is recorded. So a crash at any point loses
nothing, and a redelivery (which the de-duplication record recognizes) delivers nothing twice.

Signal handlers only set flags; the loop acts on them between units of work, never inside a
transaction: SIGHUP reloads (``reload``), the first SIGTERM or SIGINT drains, a second exits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import structlog

from exchange.audit.entries import Event
from exchange.errors import StaleDelivery
from exchange.node import reload
from exchange.node.context import NodeContext
from exchange.node.delivery import Deliverer
from exchange.node.dispatcher import Dispatcher
from exchange.node.doors import Door
from exchange.node.faults import fault
from exchange.node.intake import Handled, receive_batch, refuse_internal
from exchange.node.metrics import Metrics
from exchange.node.systemd import notify
from exchange.node.transport import Consumer, Delivery, Transport
from exchange.store.states import Outcome

log = structlog.get_logger(__name__)

WINDOW = 64
"""Envelopes verified and committed together, and acked with one frame."""
HOUSEKEEPING_S = 0.5
"""Deliveries retried, doors polled, checkpoints considered, gauges and the watchdog refreshed
this often."""

Handler = Callable[[int, FrameType | None], object] | int | None


class Daemon:
    """One node: a loop over inbound, outbound, delivery, doors and checkpoints, until told to stop."""

    def __init__(self, ctx: NodeContext, transport: Transport, *, doors: Sequence[Door] = (),
                 window: int = WINDOW) -> None:
        self.ctx = ctx
        self.transport = transport
        self.doors = tuple(doors)
        self.window = window
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(ctx, transport, self.metrics)
        self.deliverer = Deliverer(ctx, self.metrics, self.doors)
        self.stopping = threading.Event()
        self.reload_asked = threading.Event()
        self.healthy = True
        self.consumer: Consumer | None = None
        self._terms = 0
        self._housekept = 0.0

    # lifecycle

    def run(self) -> int:
        """Start, loop until told to stop, drain; returns the exit code."""
        previous = self._signals()
        try:
            self._start()
            try:
                while not self.stopping.is_set():
                    self.tick()
            finally:
                self._shutdown()
        finally:
            _restore(previous)
        return 0

    def _start(self) -> None:
        for door in self.doors:
            door.check(self.ctx.config)
        self.deliverer.recover()
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.NODE_STARTED, detail={"rules": self.ctx.rules.digest}))
        self.transport.declare(self.ctx.agency)
        self.consumer = self.transport.consume(self.ctx.agency, prefetch=self.window * 2)
        self.metrics.refresh(self.ctx, self.healthy)
        if self.ctx.config.metrics_port:
            self.metrics.serve(self.ctx.config.metrics_port)
        for door in self.doors:
            door.start()
        notify("READY=1")
        log.info("node.started", agency=str(self.ctx.agency), rules=self.ctx.rules.digest[:12])

    def tick(self, wait: float = 0.05) -> None:
        """One pass: a reload if one was asked for, the outbox, an inbound window (waiting only
        when there is nothing to send), the receipts it produced, deliveries, and every half
        second the housekeeping. Each step commits its own transactions before the next."""
        assert self.consumer is not None
        if self.reload_asked.is_set():
            self.reload_asked.clear()
            self.reload()
        sent = self.dispatcher.dispatch()
        if self.inbound(self.consumer, 0.0 if sent else wait):
            self.dispatcher.dispatch()
            self.deliverer.deliver()
        now = time.monotonic()
        if now - self._housekept >= HOUSEKEEPING_S:
            self._housekept = now
            self._housekeeping()

    def _housekeeping(self) -> None:
        for door in self.doors:
            door.poll(self.ctx)
        self.deliverer.deliver()
        self._checkpoint()
        self.metrics.refresh(self.ctx, self.healthy)
        notify("WATCHDOG=1")

    def _shutdown(self) -> None:
        notify("STOPPING=1")
        for door in reversed(self.doors):
            door.stop()
        if self.consumer is not None:
            self.consumer.close()
        self.dispatcher.dispatch()
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.NODE_STOPPED))
        self.ctx.checkpointer.make()
        log.info("node.stopped", agency=str(self.ctx.agency))

    def reload(self) -> bool:
        """Reload node.toml, the trust store and the rules (see ``exchange.node.reload``)."""
        return reload.reload(self.ctx, self.doors)

    # signals: handlers only set flags

    def _signals(self) -> dict[int, Handler]:
        """Install the handlers (from the main thread only); returns the ones they replace."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        handlers = {signal.SIGTERM: self._on_term, signal.SIGINT: self._on_term, signal.SIGHUP: self._on_hup}
        return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_asked.set()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._terms += 1
        if self._terms > 1:
            log.warning("node.exit_now")
            os._exit(1)
        log.info("node.draining")
        self.stopping.set()

    # inbound

    def inbound(self, consumer: Consumer, wait: float) -> bool:
        """Take in one window: record it in one transaction, then ack it; returns whether any came."""
        deliveries = consumer.fetch(self.window, wait)
        if not deliveries:
            return False
        try:
            results = receive_batch(self.ctx, [(d.message.message_id, d.message.body) for d in deliveries])
        except Exception:  # noqa: BLE001 - one poison message must not stop the node: isolate it
            log.exception("inbound.window_failed", size=len(deliveries))
            results = [self._receive_alone(d) for d in deliveries]
        fault("after-commit-before-ack")
        accepted = [d for d, r in zip(deliveries, results, strict=True) if r.outcome is not Outcome.REFUSED]
        try:
            if accepted:
                consumer.ack(accepted)
            for delivery, result in zip(deliveries, results, strict=True):
                self.metrics.received.labels(result.outcome.value).inc()
                if result.outcome is Outcome.REFUSED:
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
            return refuse_internal(self.ctx, delivery.message.message_id, exc)

    # checkpoints

    def _checkpoint(self) -> None:
        try:
            self.ctx.checkpointer.maybe()
        except Exception as exc:  # noqa: BLE001 - a checkpoint must never stop traffic
            log.error("audit.checkpoint_error", error=repr(exc))


def _restore(previous: dict[int, Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


__all__ = ["Daemon"]
