"""A node lists several brokers and fails over between them: ``[transport] broker`` as a list (or
one URL, or a comma-separated EXCHANGE_TRANSPORT_BROKER), the first reachable one used, the next
one taken when its connection dies. On two private nodes (tests/rabbit_node.py), never the host's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exchange.adapters.amqp import AmqpTransport
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig
from tests.conftest import started
from tests.node_cluster import COMMUNE, INSURANCE, POLICE, Cluster, events_named, wait_until
from tests.rabbit_cluster import list_brokers
from tests.rabbit_node import RabbitNode, private_node
from tests.test_amqp import round_trip, wait_connected
from tests.transport_helpers import fresh_agency

NODES = (COMMUNE, POLICE, INSURANCE)


@pytest.fixture(scope="module")
def second_rabbit() -> Iterator[RabbitNode]:
    """A second private node, independent of ``private_rabbit`` (no cluster): the standby broker."""
    with started("a second private RabbitMQ node", private_node()) as node:
        yield node


@pytest.fixture
def pair(private_rabbit: RabbitNode, second_rabbit: RabbitNode) -> Iterator[tuple[RabbitNode, RabbitNode]]:
    """(first, second): the first may be stopped or killed by the test; both run again after it."""
    second_rabbit.ensure_running()
    yield private_rabbit, second_rabbit
    private_rabbit.ensure_running()


def toml(tmp_path: Path, broker: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nagency = "{COMMUNE}"\nstate_dir = "state"\n[pki]\nca = "ca.pem"\ncert = "cert.pem"\n'
                    f'key = "key.pem"\n[audit]\ncheckpoint_key = "ck.pem"\n[rules]\ndir = "rules"\n'
                    f'[transport]\n{broker}\n', "utf-8")
    return path


A, B = "amqp://exchange@a.example:5672/p", "amqp://exchange@b.example:5672/p"


def test_broker_may_be_one_url_or_a_list(tmp_path: Path) -> None:
    """``broker`` takes one URL (as before) or a TOML list, kept in order, the password put into each."""
    assert NodeConfig.load(toml(tmp_path, f'broker = "{A}"'), environ={}).brokers == (A,)
    config = NodeConfig.load(toml(tmp_path, f'broker = ["{A}", "{B}"]'), environ={"EXCHANGE_BROKER_PASSWORD": "pw"})
    assert config.brokers == (A.replace("exchange@", "exchange:pw@"), B.replace("exchange@", "exchange:pw@"))
    assert config.broker == config.brokers[0]


def test_the_environment_overrides_with_a_comma_separated_list(tmp_path: Path) -> None:
    """EXCHANGE_TRANSPORT_BROKER="URL1,URL2" replaces node.toml's brokers, in its order."""
    config = NodeConfig.load(toml(tmp_path, f'broker = "{A}"'), environ={"EXCHANGE_TRANSPORT_BROKER": f"{B}, {A}"})
    assert config.brokers == (B, A)


@pytest.mark.parametrize(("line", "complaint"), [
    ("broker = 5672", "broker must be a URL or a list of URLs"),
    (f'broker = ["{A}", 1]', "broker must be a URL or a list of URLs"),
    ("broker = []", "broker is an empty list"),
    ('queue_type = "mirrored"', "queue_type is 'mirrored'; expected one of quorum, classic"),
])
def test_bad_broker_settings_are_refused_by_name(tmp_path: Path, line: str, complaint: str) -> None:
    """A broker that is not a URL or a list of them, or an unknown queue type, is a ConfigError
    naming the file and the setting."""
    with pytest.raises(ConfigError, match=r"node\.toml: \[transport\] " + complaint.replace("[", r"\[")):
        NodeConfig.load(toml(tmp_path, line), environ={})


def test_the_first_reachable_broker_serves(pair: tuple[RabbitNode, RabbitNode]) -> None:
    """With the first broker down when the transport starts, it connects to the second and works."""
    first, second = pair
    first.stop_app()
    with AmqpTransport([first.url, second.url], connect_timeout=5, reconnect_max=1.0) as transport:
        wait_connected(transport)
        assert transport.params.port == second.port
        agency = fresh_agency()
        round_trip(transport, transport.consume(agency), agency)


def test_a_lost_broker_fails_over_to_the_next(pair: tuple[RabbitNode, RabbitNode]) -> None:
    """A transport on the first broker, which is killed -9, reconnects to the second at once (not
    after the first's backoff), declares its queues there, and its consumer receives again."""
    first, second = pair
    with AmqpTransport([first.url, second.url], connect_timeout=5, reconnect_max=1.0) as transport:
        agency = fresh_agency()
        consumer = transport.consume(agency)
        assert transport.params.port == first.port
        round_trip(transport, consumer, agency)
        with capture_logs() as events:
            first.kill()
            wait_until(lambda: not transport.health().connected or transport.params.port == second.port, 10,
                       "the loss noticed")
            wait_connected(transport)
        assert transport.params.port == second.port
        assert [e["port"] for e in events if e["event"] == "amqp.connected"] == [second.port]
        round_trip(transport, consumer, agency)


@contextlib.contextmanager
def district(root: Path, first: RabbitNode, second: RabbitNode) -> Iterator[Cluster]:
    """The birth route's three nodes as processes, each node.toml listing both brokers."""
    cluster = Cluster(root, broker=first.url)
    cluster.init(*NODES)
    for agency in NODES:
        list_brokers(cluster.config(agency), first.url, second.url)
    try:
        for agency in NODES:
            cluster.start(agency)
        yield cluster
    finally:
        cluster.stop_all()


def complete(cluster: Cluster, code: str) -> None:
    cluster.finish_birth_route([code])
    wait_until(lambda: any(row["code"] == code and row["state"] == "completed" for row in cluster.status(COMMUNE)),
               60, f"{code} completed at the commune")


@pytest.mark.timeout(300)
def test_nodes_keep_working_through_the_second_broker(tmp_path: Path, pair: tuple[RabbitNode, RabbitNode]) -> None:
    """Three node processes on the first of their two brokers complete a dossier; the first broker
    is stopped; every node reconnects to the second, and a new dossier completes there."""
    first, second = pair
    with district(tmp_path, first, second) as cluster:
        complete(cluster, cluster.submit(1))
        marks = {agency: cluster.log(agency).stat().st_size for agency in NODES}
        first.stop_app()
        for agency in NODES:
            wait_until(lambda a=agency: any(e.get("port") == second.port
                                            for e in events_named(cluster.log(a), "amqp.connected", marks[a])),
                       60, f"{agency} on the second broker")
        complete(cluster, cluster.submit(2))
        assert [a for a, p in cluster.processes.items() if p.poll() is not None] == []
