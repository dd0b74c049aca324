"""The node's Prometheus metrics: counters the rooms increment; gauges the housekeeping refreshes
every few seconds from counting queries (never per transfer); health gauges computed when
scraped (so a stuck loop cannot leave a stale "healthy").

Every series the alert rules in ``monitoring/alerts.yml`` and the dashboard use is exported here
(or by the CRL and bundle watches, ``reload.CrlWatch`` and ``configuration.BundleWatch``), with
a value from the first refresh on: tests/test_metrics_scrape.py holds rules and exposition together.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exchange import clock
from exchange.audit.entries import Event
from exchange.codes import AgencyCode
from exchange.envelope.model import Kind
from exchange.errors import RoutingError, TransportError
from exchange.node.context import NodeContext
from exchange.node.status import today
from exchange.node.transport import Transport
from exchange.store import audit as audit_rows
from exchange.store.states import OutboxState, Outcome

log = structlog.get_logger(__name__)

GAUGES_EVERY_S = 15.0
"""The database gauges are recounted at most this often: scrapes come every 15 s or more, alerts
wait minutes, and the counting queries, though indexed (store schema 5), take about 11 ms at
200,000 dossiers (benchmarks/metrics.py)."""
DEAD_LETTERS_EVERY_S = 60.0
"""The transport's dead letters for this node are counted at most this often: on RabbitMQ each
count opens a connection for a passive declare of the dead-letter queue."""
DIRECTIONS = ("out", "in")
"""Dead letters: ``out`` given up sending (the outbox), ``in`` refused to this node (the transport's)."""


@dataclass(eq=False)  # a registry keys its collectors by identity
class LogCounter(Collector):
    """A counter counted in the node's audit log, so that it survives restarts and never resets:
    the housekeeping sets it, scrapes read it (``NAME_total``)."""

    name: str
    documentation: str
    value: float = 0.0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


@dataclass
class EventTally:
    """How many entries of one event the audit log holds, counted a stretch at a time: only the
    entries appended since the last count are read."""

    event: Event
    counted_to: int = 0
    total: int = 0

    def update(self, ctx: NodeContext) -> int:
        size = ctx.audit.size
        if size > self.counted_to:
            self.total += audit_rows.count_event(ctx.audit.conn, self.event.value, self.counted_to, size)
            self.counted_to = size
        return self.total


@dataclass
class Metrics:
    """One node's registry (not the process-global one, so that tests can run several nodes)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _refreshed_at: float = field(default=-math.inf, init=False)
    _dead_counted_at: float = field(default=-math.inf, init=False)
    _forks: EventTally = field(default_factory=lambda: EventTally(Event.FORK_DETECTED), init=False)

    def __post_init__(self) -> None:
        self._counters(self.registry)
        self._gauges(self.registry)
        self.fork_alarms = LogCounter("exchange_witness_fork_alarms",
                                      "Fork alarms raised by witnessing peers' checkpoints (counted in the audit log)")
        self.registry.register(self.fork_alarms)

    def _counters(self, r: CollectorRegistry) -> None:
        self.received = Counter("exchange_envelopes_received", "Envelopes taken in, by outcome", ["outcome"],
                                registry=r)
        self.published = Counter("exchange_envelopes_published", "Envelopes published, by kind", ["kind"],
                                 registry=r)
        self.retransmitted = Counter("exchange_retransmissions", "Envelopes published again", registry=r)
        self.dead = Counter("exchange_dead_lettered", "Transfers given up after the retry bound", registry=r)
        self.delivered = Counter("exchange_delivered", "Files handed to the agency system", registry=r)
        self.verified = Counter("exchange_envelopes_verified", "Envelopes taken in, by where they were verified "
                                "(workers: the verifier processes; loop: the node's loop)", ["by"], registry=r)
        for by in ("workers", "loop"):
            self.verified.labels(by)
        for outcome in Outcome:  # every series exists from the start: a rate over it is 0, not "no data"
            self.received.labels(outcome.value)
        for kind in Kind:
            self.published.labels(kind.value)

    def _gauges(self, r: CollectorRegistry) -> None:
        self.info = Gauge("exchange_node_info", "1, labelled with the node's agency code", ["agency"], registry=r)
        self.outbox = Gauge("exchange_outbox", "Outbox rows by state", ["state"], registry=r)
        self.outbox_oldest = Gauge("exchange_outbox_oldest_due_seconds",
                                   "Age of the oldest outgoing envelope not yet confirmed or receipted (0: none)",
                                   registry=r)
        self.dead_letters = Gauge("exchange_dead_letters",
                                  "Dead letters held: out, given up sending; in, refused to this node (NaN: unknown)",
                                  ["direction"], registry=r)
        self.overdue = Gauge("exchange_overdue_dossiers", "Dossiers with a step ready here past its due date",
                             registry=r)
        self.overdue_days = Gauge("exchange_overdue_max_workdays",
                                  "Working days by which the most overdue step here is late (0: none)", registry=r)
        self.webhook_backlog = Gauge("exchange_webhook_backlog", "Webhook pushes waiting for the agency system",
                                     registry=r)
        self.audit = Gauge("exchange_audit_entries", "Entries in the audit log", registry=r)
        self.uncheckpointed = Gauge("exchange_audit_uncheckpointed_entries",
                                    "Audit entries no signed checkpoint covers yet", registry=r)
        self.checkpoint_age = Gauge("exchange_checkpoint_age_seconds",
                                    "Seconds since the newest audit checkpoint was signed (+Inf: none yet)", registry=r)
        self.crl_age = Gauge("exchange_crl_age_seconds",
                             "Seconds since the oldest CRL in force was issued (its thisUpdate; NaN: no CRL)",
                             registry=r)
        self.healthy = Gauge("exchange_healthy", "1 when the loop runs and its transport works", registry=r)
        self.transport_up = Gauge("exchange_transport_up", "1 while the node's transport works", registry=r)
        self.certificate_left = Gauge("exchange_certificate_seconds_left",
                                      "Seconds until the certificate the node signs with expires (negative: it has)",
                                      registry=r)
        for state in OutboxState:
            self.outbox.labels(state.value)
        for direction in DIRECTIONS:
            self.dead_letters.labels(direction).set(math.nan)  # unknown until counted

    def watch(self, healthy: Callable[[], bool], transport_up: Callable[[], bool]) -> None:
        """Compute the health gauges at each scrape from these (called from the server's thread)."""
        self.healthy.set_function(lambda: 1.0 if healthy() else 0.0)
        self.transport_up.set_function(lambda: 1.0 if transport_up() else 0.0)

    def housekeep(self, ctx: NodeContext, transport: Transport | None) -> None:
        """From the loop's housekeeping: the database gauges every ``GAUGES_EVERY_S``, the
        transport's dead letters every ``DEAD_LETTERS_EVERY_S`` (``transport`` None while it is down)."""
        now = time.monotonic()
        if now - self._refreshed_at >= GAUGES_EVERY_S:
            self.refresh(ctx)
        if transport is not None and now - self._dead_counted_at >= DEAD_LETTERS_EVERY_S:
            self.count_dead_letters(transport, ctx.agency)

    def refresh(self, ctx: NodeContext) -> None:
        """Set the gauges from the database, the trust store and the signing certificate."""
        self._refreshed_at = time.monotonic()
        now = time.time()
        self.info.labels(str(ctx.agency)).set(1)
        self._outbox(ctx, now)
        self._overdue(ctx)
        self.webhook_backlog.set(ctx.store.webhook_backlog())
        self._audit(ctx, now)
        self.certificate_left.set(ctx.signer.cert.not_valid_after_utc.timestamp() - now)
        issued = [crl.last_update_utc.timestamp() for crl in ctx.opener.trust.crls]
        self.crl_age.set(now - min(issued) if issued else math.nan)

    def count_dead_letters(self, transport: Transport, agency: AgencyCode) -> None:
        """Count the dead letters the transport holds for this node (NaN if it cannot say now)."""
        self._dead_counted_at = time.monotonic()
        try:
            held: float = transport.dead_letter_count(agency)
        except TransportError as exc:
            log.warning("metrics.dead_letters_unknown", error=str(exc))
            held = math.nan
        self.dead_letters.labels("in").set(held)

    def _outbox(self, ctx: NodeContext, now: float) -> None:
        counts = ctx.store.counts()
        for state in OutboxState:
            self.outbox.labels(state.value).set(counts.get(f"outbox_{state.value}", 0))
        self.dead_letters.labels("out").set(counts.get(f"outbox_{OutboxState.DEAD.value}", 0))
        oldest = ctx.store.oldest_due_created()
        self.outbox_oldest.set(0.0 if oldest is None else max(0.0, now - oldest))

    def _overdue(self, ctx: NodeContext) -> None:
        day = today(ctx)
        count, earliest = ctx.store.overdue_summary(day)
        self.overdue.set(count)
        self.overdue_days.set(0 if earliest is None else _working_days_late(ctx, earliest, day))

    def _audit(self, ctx: NodeContext, now: float) -> None:
        size = ctx.audit.size
        self.audit.set(size)
        latest = audit_rows.latest_checkpoint_made(ctx.audit.conn)
        covered, made_at = latest if latest else (0, None)
        self.uncheckpointed.set(max(0, size - covered))
        self.checkpoint_age.set(math.inf if made_at is None else now - clock.parse(made_at).timestamp())
        self.fork_alarms.value = self._forks.update(ctx)

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on 127.0.0.1:``port`` from a thread of prometheus_client's."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)
        log.info("metrics.listening", port=port)


def _working_days_late(ctx: NodeContext, due: str, day: str) -> float:
    """Working days after ``due`` up to ``day``; NaN if the calendar does not cover them."""
    try:
        return ctx.rules.calendar.working_days_between(dt.date.fromisoformat(due), dt.date.fromisoformat(day))
    except (RoutingError, ValueError):
        return math.nan
