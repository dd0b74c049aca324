"""A RabbitMQ cluster that loses nodes: agency queues are quorum queues replicated on the three
nodes of a private cluster (tests/rabbit_cluster.py), and node processes under load lose nothing
and deliver nothing twice while broker nodes are SIGKILLed one after the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.adapters.amqp import AmqpTransport, dead_queue_name, queue_name
from tests.cluster_loss import ClusterLoss, Loss
from tests.conftest import started
from tests.node_cluster import events_named
from tests.rabbit_cluster import RabbitCluster, private_cluster
from tests.soak import NODES, Plan
from tests.transport_helpers import fresh_agency

LOAD = Plan(dossiers=200, fault_seconds=36.0, drain_seconds=150.0)
LOSSES = (Loss(node=0, at=6.0, down_for=10.0), Loss(node=1, at=22.0, down_for=8.0))
"""The first broker node (the one every node process is connected to) killed, started again, and
then the second (which they failed over to) killed while the first is back."""


@pytest.fixture(scope="module")
def rabbits() -> Iterator[RabbitCluster]:
    """One private three-node cluster for the module (about 15 s to start), always stopped."""
    with started("a private RabbitMQ cluster", private_cluster()) as cluster:
        yield cluster


@pytest.fixture
def cluster(rabbits: RabbitCluster) -> RabbitCluster:
    """The cluster with its three nodes running, whatever the previous test left."""
    for node in rabbits.nodes:
        if not node.running:
            node.spawn()
    for node in rabbits.nodes:
        node.await_startup()
    return rabbits


def test_agency_queues_are_quorum_queues_on_all_three_nodes(cluster: RabbitCluster) -> None:
    """An agency's queue and its dead-letter queue, declared by a transport listing the three
    brokers, are quorum queues with a member on each node, one of them the leader."""
    agency = fresh_agency()
    with AmqpTransport(cluster.urls) as transport:
        transport.declare(agency)
    names = sorted(node.name for node in cluster.nodes)
    assert cluster.queue_members(queue_name(agency)) == names
    assert cluster.queue_members(dead_queue_name(agency)) == names
    states = cluster.quorum_status(queue_name(agency))
    assert sorted(states) == names
    assert sorted(states.values()) == ["follower", "follower", "leader"]


@pytest.mark.timeout(420)
def test_losing_broker_nodes_under_load_loses_nothing(tmp_path: Path, cluster: RabbitCluster) -> None:
    """Four node processes pass 200 birth registrations while the broker node they are connected to
    is SIGKILLed, and, once it is back, the one they failed over to: every dossier completes,
    nothing is delivered twice or left in a queue or an outbox, every audit log verifies."""
    run = ClusterLoss(tmp_path, LOAD, cluster, LOSSES)
    figures = run.run()
    print(figures.report())
    print("\n".join(f"  {at:5.1f} s  {what}" for at, what in run.timeline.events))
    assert figures.problems == [], figures.report()
    assert figures.faults["SIGKILL broker node"] == 2
    assert figures.dossiers == LOAD.dossiers
    ports = [node.port for node in cluster.nodes]
    for agency in NODES:  # on the first broker, then the second, then the third: both losses were felt
        connected = [e["port"] for e in events_named(run.cluster.log(agency), "amqp.connected")]
        assert connected[0] == ports[0], connected
        assert set(connected) == set(ports), connected
