"""The node's Prometheus metrics: counters the rooms increment, gauges refreshed by housekeeping,
and health gauges computed when scraped (so a stuck loop cannot leave a stale "healthy")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from exchange.node.context import NodeContext
from exchange.store.states import OutboxState

log = structlog.get_logger(__name__)


@dataclass
class Metrics:
    """One node's registry (not the process-global one, so that tests can run several nodes)."""

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
        self.healthy = Gauge("exchange_healthy", "1 when the loop runs and its transport works", registry=r)
        self.transport_up = Gauge("exchange_transport_up", "1 while the node's transport works", registry=r)
        self.certificate_left = Gauge("exchange_certificate_seconds_left",
                                      "Seconds until the certificate the node signs with expires (negative: it has)",
                                      registry=r)

    def watch(self, healthy: Callable[[], bool], transport_up: Callable[[], bool]) -> None:
        """Compute the health gauges at each scrape from these (called from the server's thread)."""
        self.healthy.set_function(lambda: 1.0 if healthy() else 0.0)
        self.transport_up.set_function(lambda: 1.0 if transport_up() else 0.0)

    def refresh(self, ctx: NodeContext) -> None:
        """Set the gauges from the database."""
        counts = ctx.store.counts()
        for state in OutboxState:
            self.outbox.labels(state.value).set(counts.get(f"outbox_{state.value}", 0))
        self.audit.set(ctx.audit.size)
        self.certificate_left.set(ctx.signer.cert.not_valid_after_utc.timestamp() - time.time())

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on 127.0.0.1:``port`` from a thread of prometheus_client's."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)
        log.info("metrics.listening", port=port)
