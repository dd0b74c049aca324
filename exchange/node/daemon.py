"""``exchange run``: the node's loop. Take in a window of envelopes, record them in one
transaction, ack the window; publish what the outbox holds (``dispatcher``); hand incoming
dossiers to the agency system (``delivery``); let the doors poll; checkpoint the audit log.

Ordering is the backbone: an incoming message is acked only after the transaction that records
it commits; an outgoing one is marked published only after the broker confirmed it; a file for
the agency system appears only after its delivery is recorded. So a crash at any point loses
nothing, and a redelivery (which the de-duplication record recognizes) delivers nothing twice.

Signal handlers only set flags; the loop acts on them between units of work, never inside a
transaction: SIGHUP reloads (``reload``), the first SIGTERM or SIGINT drains, a second exits.

A transport fault never ends the loop, and no pass waits for the transport for seconds. The node
starts without its transport; every transport call (declare and consume, publish, fetch, ack,
dead-letter) that fails is noted by the ``Link`` (logged once per outage), the transport's share
of the following passes is skipped until the next attempt time, and acks and dead letters not
yet made are kept for that attempt. Housekeeping goes on meanwhile: deliveries, doors,
checkpoints, the watchdog, and the heartbeat file that ``exchange check`` judges (``health``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

import structlog

from exchange.audit.entries import Event
from exchange.errors import StaleDelivery, StoreError, TransportError, TransportUnavailable
from exchange.node import configuration, reload, slips, wake
from exchange.node.context import NodeContext
from exchange.node.delivery import Deliverer, DeliveryWorker
from exchange.node.dispatcher import Dispatcher
from exchange.node.doors import Door
from exchange.node.faults import fault
from exchange.node.health import DOWN_AFTER_S, HEARTBEAT_EVERY_S, STALE_AFTER_S, Heartbeat, Link, healthy
from exchange.node.intake import Handled, receive_batch, refuse_internal
from exchange.node.metrics import Metrics
from exchange.node.systemd import notify
from exchange.node.transport import Consumer, Delivery, Transport, TransportHealth
from exchange.node.verifiers import Batch, VerifierPool
from exchange.store.states import Outcome

log = structlog.get_logger(__name__)

WINDOW = 64
"""Envelopes verified and committed together, and acked with one frame."""
STORE_RETRY_S = 1.0
"""A pass that met the node's database failing is tried again this much later."""
HOUSEKEEPING_S = 0.5
"""Deliveries retried, doors polled, checkpoints considered, gauges and the watchdog refreshed
this often."""

Handler = Callable[[int, FrameType | None], object] | int | None


class Daemon:
    """One node: a loop over inbound, outbound, delivery, doors and checkpoints, until told to stop."""

    def __init__(self, ctx: NodeContext, transport: Transport, *, doors: Sequence[Door] = (),
                 window: int = WINDOW, down_after: float = DOWN_AFTER_S) -> None:
        self.ctx = ctx
        self.transport = transport
        self.doors = tuple(doors)
        self.window = window
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(ctx, transport, self.metrics)
        self.deliverer = Deliverer(ctx, self.metrics, self.doors)
        self.stopping = threading.Event()
        self.reload_asked = threading.Event()
        self.link = Link()
        self.down_after = down_after
        self.consumer: Consumer | None = None
        self._unacked: list[Delivery] = []
        self._refused: list[tuple[Delivery, str]] = []
        """What the consumer has not been told yet (its transport failed): told at the next try."""
        self._terms = 0
        self._housekept = 0.0
        self._loop_at = time.monotonic()
        self._heartbeat_at = 0.0
        self._wakes: wake.Listener | None = None
        self._delivery: DeliveryWorker | None = None
        self.verifiers: VerifierPool | None = None
        self._ahead: Window | None = None
        """The next window, fetched and in the verifiers' hands while the loop records this one."""
        self.metrics.watch(self.healthy, lambda: self.transport_health().connected)
        self.crl = reload.CrlWatch(ctx)
        self.crl.gauge(self.metrics.registry)
        self.bundles = configuration.BundleWatch(ctx)
        self.bundles.gauge(self.metrics.registry)

    # lifecycle

    def run(self) -> int:
        """Start, loop until told to stop, drain; returns the exit code."""
        previous = self._signals()
        try:
            self._start()
            try:
                while not self.stopping.is_set():
                    self._pass()
            finally:
                self._shutdown()
        finally:
            _restore(previous)
        return 0

    def _start(self) -> None:
        for door in self.doors:
            door.check(self.ctx.config)
        self.deliverer.recover()
        self.verifiers = self._verifier_pool()
        self._delivery = DeliveryWorker(Deliverer(self.ctx.for_thread(), self.metrics, self.doors), HOUSEKEEPING_S)
        if sealed := self.ctx.store.seal_plaintext_rows():
            log.info("store.sealed_at_rest", rows=sealed)
        self.bundles.poll(force=True)  # a bundle whose time came while the node was down
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.NODE_STARTED, detail={"rules": self.ctx.rules.digest}))
        self._transport_work(self._subscribe)  # one try; if the transport is down, the loop retries
        self._wakes = wake.Listener(self.ctx.config.state_dir, self._woken)
        self.metrics.refresh(self.ctx)
        self._heartbeat()
        if self.ctx.config.metrics_port:
            self.metrics.serve(self.ctx.config.metrics_port)
        for door in self.doors:
            door.start()
        notify("READY=1")
        log.info("node.started", agency=str(self.ctx.agency), rules=self.ctx.rules.digest[:12])

    def _pass(self) -> None:
        """One pass of the loop; the node's own database failing (held by another process past
        the busy timeout, a disk error) is logged and tried again, never the end of the node."""
        try:
            self.tick()
        except StoreError as exc:
            log.error("store.unavailable", error=str(exc))
            self.stopping.wait(STORE_RETRY_S)

    def tick(self, wait: float = 0.05) -> None:
        """One pass: a reload if one was asked for, the transport's share (unless a failure put
        its next try later), and every half second the housekeeping. Each step commits its own
        transactions before the next."""
        if self.reload_asked.is_set():
            self.reload_asked.clear()
            self.reload()
        if self.link.due():
            self._transport_work(lambda: self._exchange(wait))
        else:
            self.stopping.wait(wait)  # idle as a fetch would have, until the next try
        now = time.monotonic()
        self._loop_at = now
        if now - self._housekept >= HOUSEKEEPING_S:
            self._housekept = now
            self._housekeeping()

    def _exchange(self, wait: float) -> None:
        """The transport's share of a pass: the consumer (made if there is none yet), what it has
        not been told, the outbox, an inbound window (waiting only when there is nothing to send),
        the receipts it produced and the deliveries."""
        consumer = self._subscribe()
        self._settle(consumer)
        sent = self.dispatcher.dispatch_or_raise()
        if self.inbound(consumer, 0.0 if sent else wait):
            self.dispatcher.dispatch_or_raise()
            self._deliver()

    def _deliver(self) -> None:
        """What was taken in goes to the agency system: on the delivery thread once the node runs
        (``run``), here when the loop is turned by hand."""
        if self._delivery is not None:
            self._delivery.poke()
        else:
            self.deliverer.deliver()

    def _woken(self) -> None:
        """Another process (or thread) enqueued work: the loop's wait for deliveries ends now."""
        consumer = self.consumer
        if consumer is not None:
            consumer.interrupt()

    def _subscribe(self) -> Consumer:
        """The consumer of this node's queue, declared and made now if there is none."""
        if self.consumer is None:
            self.transport.declare(self.ctx.agency)
            self.consumer = self.transport.consume(self.ctx.agency, prefetch=self.window * 2)
        return self.consumer

    def _transport_work(self, work: Callable[[], object]) -> None:
        """Run ``work``; a transport fault is noted for the backoff, never raised. A fault that is
        not unavailability (a closed channel, a refusal) also drops the consumer, made again at
        the next try; what it had not acked comes back as redeliveries."""
        try:
            work()
        except TransportError as exc:
            self.link.failed(exc)
            if not isinstance(exc, TransportUnavailable):
                self._drop_consumer()
        else:
            if self.link.succeeded():
                with self.ctx.store.transaction():
                    self.ctx.store.due_now_after_failures()  # what the outage held back goes now

    def _drop_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        self._unacked, self._refused, self._ahead = [], [], None
        if consumer is not None:
            with contextlib.suppress(TransportError):
                consumer.close()

    def transport_health(self) -> TransportHealth:
        """The transport's state: as the loop saw it, and as the transport itself reports it."""
        return self.link.seen(self.transport.health())

    def healthy(self) -> bool:
        """The loop ran lately and its transport has not been down for longer than ``down_after``."""
        return (time.monotonic() - self._loop_at <= STALE_AFTER_S
                and healthy(self.transport_health(), time.time(), self.down_after))

    def _housekeeping(self) -> None:
        for door in self.doors:
            self._poll(door)
        self._deliver()
        slips.publish(self.ctx)
        self.crl.poll()
        self.bundles.poll()
        self._checkpoint()
        self.metrics.housekeep(self.ctx, self.transport if self.link.up else None)
        if time.monotonic() - self._heartbeat_at >= HEARTBEAT_EVERY_S:
            self._heartbeat()
        notify("WATCHDOG=1")

    def _poll(self, door: Door) -> None:
        """Let one door poll; its failure is logged and the loop goes on with the other doors and
        the rest of the housekeeping (the node's own database failing is the loop's to handle)."""
        try:
            door.poll(self.ctx)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - one door failing must not stop the node
            log.error("door.poll_failed", door=type(door).__name__, error=repr(exc), exc_info=exc)

    def _heartbeat(self, *, running: bool = True) -> None:
        """Publish the loop's health for ``exchange check`` (a file in the state directory)."""
        self._heartbeat_at = time.monotonic()
        try:
            bundle = self.bundles.current
            beat = Heartbeat.of(str(self.ctx.agency), self.transport_health(), running=running,
                                rules_digest=self.ctx.rules.digest, crl_seconds_left=self.crl.seconds_left(),
                                webhook_backlog=self.ctx.store.webhook_backlog(),
                                certificate_not_after=self.ctx.signer.cert.not_valid_after_utc.timestamp(),
                                config_version=bundle.version if bundle else None,
                                config_expires=bundle.expires.timestamp() if bundle else None)
            beat.write(self.ctx.config.state_dir)
        except OSError as exc:  # a full disk must not stop traffic; a stale heartbeat reports it
            log.error("node.heartbeat_failed", error=str(exc))

    def _shutdown(self) -> None:
        """Stop the doors, tell the consumer what it has not been told and close it, publish what
        is due, and record the stop; the transport is only tried if it is up."""
        notify("STOPPING=1")
        if self._wakes is not None:
            self._wakes.close()
        for door in reversed(self.doors):
            door.stop()
        if self.link.up:
            self._transport_work(self._drain)
        self._drop_consumer()
        if self.verifiers is not None:
            self.verifiers.close()
            self.verifiers = None
        if self._delivery is not None:
            self._delivery.close()
            self._delivery = None
        self.deliverer.close()
        with self.ctx.store.transaction():
            self.ctx.record(self.ctx.entry(Event.NODE_STOPPED))
        self.ctx.checkpointer.make()
        self._heartbeat(running=False)
        log.info("node.stopped", agency=str(self.ctx.agency))

    def _drain(self) -> None:
        if self.consumer is not None:
            self._settle(self.consumer)
        self.dispatcher.dispatch_or_raise()

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
        """Take in one window: record it in one transaction, then ack it; returns whether any came.
        With verifier processes, the next window is fetched and handed to them first, so that
        they verify it while this one is recorded."""
        window, self._ahead = self._ahead or Window(consumer.fetch(self.window, wait)), None
        deliveries = window.deliveries
        if not deliveries:
            return False
        self._verify_ahead(consumer)
        verdicts = window.batch.verdicts(self.ctx.opener) if window.batch is not None else None
        self._count_verified(verdicts, len(deliveries))
        try:
            try:
                results = receive_batch(self.ctx, [(d.message.message_id, d.message.body) for d in deliveries],
                                        verdicts)
            except StoreError:
                raise
            except Exception:  # noqa: BLE001 - one poison message must not stop the node: isolate it
                log.exception("inbound.window_failed", size=len(deliveries))
                results = [self._receive_alone(d) for d in deliveries]
        except StoreError as exc:  # the database failed, not the messages: give the window back whole
            log.error("inbound.store_failed", error=str(exc), size=len(deliveries))
            consumer.nack(deliveries)
            return True
        fault("after-commit-before-ack")
        for delivery, result in zip(deliveries, results, strict=True):
            self.metrics.received.labels(result.outcome.value).inc()
            if result.outcome is Outcome.REFUSED:
                self._refused.append((delivery, result.reason))
            else:
                self._unacked.append(delivery)
        self._settle(consumer)
        return True

    def _verify_ahead(self, consumer: Consumer) -> None:
        """Fetch the next window now and hand it to the verifier processes, if there are any."""
        if self.verifiers is None:
            return
        if not self.verifiers.serves(self.ctx.opener):  # reloaded: the trust, CRL or key changed
            self.verifiers.close()
            self.verifiers = self._verifier_pool()
            if self.verifiers is None:
                return
        try:
            deliveries = consumer.fetch(self.window, 0.0)
        except TransportError:  # the loop's own next fetch meets it; this window is recorded first
            return
        if deliveries:
            self._ahead = Window(deliveries, self.verifiers.submit(
                [(f"message {d.message.message_id}", d.message.body) for d in deliveries]))

    def _verifier_pool(self) -> VerifierPool | None:
        config = self.ctx.config
        return VerifierPool.start(self.ctx.opener, config.cert, config.key, config.verifier_processes)

    def _count_verified(self, verdicts: Sequence[object] | None, size: int) -> None:
        by_workers = sum(verdict is not None for verdict in verdicts) if verdicts else 0
        if by_workers:
            self.metrics.verified.labels("workers").inc(by_workers)
        if size - by_workers:
            self.metrics.verified.labels("loop").inc(size - by_workers)

    def _settle(self, consumer: Consumer) -> None:
        """Ack what was recorded and dead-letter what was refused. If the transport fails, the
        rest stays for the next try (with the same consumer); a stale delivery comes back as a
        redelivery, which the inbox recognizes."""
        if self._unacked:
            with _stale_is_redelivered():
                consumer.ack(self._unacked)
            self._unacked = []
        while self._refused:
            delivery, reason = self._refused[0]
            with _stale_is_redelivered():
                consumer.dead_letter(delivery, reason)
            self._refused.pop(0)

    def _receive_alone(self, delivery: Delivery) -> Handled:
        """One delivery in its own transaction; if it still fails, it is refused as an internal
        error, dead-lettered and audited, and the node goes on with the others."""
        try:
            return receive_batch(self.ctx, [(delivery.message.message_id, delivery.message.body)])[0]
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - see inbound()
            log.exception("inbound.message_failed", message=delivery.message.message_id)
            return refuse_internal(self.ctx, delivery.message.message_id, exc, delivery.message.body)

    # checkpoints

    def _checkpoint(self) -> None:
        try:
            self.ctx.checkpointer.maybe()
        except Exception as exc:  # noqa: BLE001 - a checkpoint must never stop traffic
            log.error("audit.checkpoint_error", error=repr(exc))


@dataclass(frozen=True)
class Window:
    """Deliveries fetched together, and the verifier processes' work on them if they have it."""

    deliveries: list[Delivery]
    batch: Batch | None = None


@contextlib.contextmanager
def _stale_is_redelivered() -> Iterator[None]:
    try:
        yield
    except StaleDelivery as exc:
        log.warning("inbound.stale_ack", error=str(exc))  # redelivered, and recognized as known


def _restore(previous: dict[int, Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


__all__ = ["Daemon"]
