"""A district of node contexts in one process, over one embedded transport, and the daemon's loop
turned by hand: for tests of what nodes say to each other, without processes or waiting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from exchange.adapters.embedded import EmbeddedTransport
from exchange.node import slips
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.delivery import Deliverer
from exchange.node.dispatcher import Dispatcher
from exchange.node.metrics import Metrics
from tests.agencies import COMMUNE, INSURANCE, POLICE
from tests.node_cluster import Cluster

Trio = tuple[NodeContext, NodeContext, NodeContext, EmbeddedTransport]
BIRTH_ROUTE = (COMMUNE, POLICE, INSURANCE)
"""The birth registration's agencies: the commune (origin), the police and social insurance."""


@contextmanager
def trio(cluster: Cluster) -> Iterator[Trio]:
    """The birth route's three nodes as contexts over one embedded transport, their queues declared."""
    if not cluster.config(str(COMMUNE)).exists():
        cluster.init(*(str(a) for a in BIRTH_ROUTE))
    with ExitStack() as stack:
        commune, police, insurance = (stack.enter_context(NodeContext.open(NodeConfig.load(cluster.config(str(a)))))
                                      for a in BIRTH_ROUTE)
        transport = stack.enter_context(EmbeddedTransport(commune.config.embedded_transport))
        for agency in BIRTH_ROUTE:
            transport.declare(agency)
        yield commune, police, insurance, transport


def publish(ctx: NodeContext, transport: EmbeddedTransport) -> None:
    """Everything due in the node's outbox, published now."""
    dispatcher = Dispatcher(ctx, transport, Metrics())
    while dispatcher.dispatch():
        pass


def settle(transport: EmbeddedTransport, *nodes: NodeContext, rounds: int = 4, wait: float = 0.05) -> None:
    """The daemon's loop by hand, every backoff already over: each node publishes (retransmitting
    what waits for a receipt), takes in, delivers and publishes its slips, a few times over."""
    for _ in range(rounds):
        for ctx in nodes:
            with ctx.store.transaction() as conn:
                conn.execute("UPDATE outbox SET next_attempt = 0")
            Dispatcher(ctx, transport, Metrics()).dispatch()
        for ctx in nodes:
            with transport.consume(ctx.agency) as consumer:
                while Daemon(ctx, transport).inbound(consumer, wait):
                    pass
            Deliverer(ctx, Metrics()).deliver()
            slips.publish(ctx)
