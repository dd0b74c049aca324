"""Between provinces: two independent brokers linked by shovels (rabbitmq_shovel) carry a dossier
from a node on one to a node on the other, and its receipt and the result back.

Two private nodes (tests/rabbit_node.py), each with the shovel plugin: the province's broker,
where the commune's node is, and the other side's (the national one in docs/rabbitmq.md), where
the receiving agency's node is. Each broker holds a queue named for every agency on the far side
(``exchange.agency.<code>``, declared as the nodes declare theirs), and a dynamic shovel on it
drains that queue into the far broker's ``exchange.envelopes``, keeping the routing key (the
agency code). The nodes change nothing: they publish to their own broker and consume their own
queue. The district police (procedure 1.001193: the commune registers a birth, the police assigns
the personal identification number, the commune returns the result) stands for the far agency:
what the shovels carry depends on queue names only, not on what the agency is.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.adapters.amqp import EXCHANGE, AmqpTransport, queue_name
from exchange.codes import AgencyCode
from tests.conftest import started
from tests.node_cluster import COMMUNE, POLICE, Cluster, cli, events_named, wait_until
from tests.rabbit_node import RabbitNode, private_node

PROCEDURE = "1.001193"
SHOVEL_PLUGINS = ("rabbitmq_shovel",)


def shovel_definition(far_agency: str, far_broker: str) -> str:
    """The dynamic shovel that drains this broker's queue for ``far_agency`` into the far broker's
    envelope exchange, keeping each message's routing key, acknowledging only what the far
    broker confirmed (docs/rabbitmq.md shows it)."""
    return json.dumps({
        "src-protocol": "amqp091", "src-uri": "amqp://", "src-queue": queue_name(far_agency),
        "dest-protocol": "amqp091", "dest-uri": far_broker, "dest-exchange": EXCHANGE,
        "ack-mode": "on-confirm", "reconnect-delay": 1,
    })


def link(broker: RabbitNode, far_agency: str, far: RabbitNode) -> None:
    """On ``broker``: the far agency's queue, and the shovel that carries it to ``far``."""
    with AmqpTransport(broker.url) as transport:
        transport.declare(AgencyCode(far_agency))
    broker.ctl("set_parameter", "shovel", f"to-{far_agency}", shovel_definition(far_agency, far.url))


def shovels_running(broker: RabbitNode) -> bool:
    rows = json.loads(broker.ctl("shovel_status", "--formatter", "json") or "[]")
    return bool(rows) and all(row.get("state") == "running" for row in rows)


@pytest.fixture
def brokers() -> Iterator[tuple[RabbitNode, RabbitNode]]:
    """(the province's broker, the far side's): two private nodes with the shovel plugin."""
    with contextlib.ExitStack() as stack:
        province = stack.enter_context(started("a private RabbitMQ node", private_node(plugins=SHOVEL_PLUGINS)))
        national = stack.enter_context(started("a private RabbitMQ node", private_node(plugins=SHOVEL_PLUGINS)))
        yield province, national


def outbox_states(cluster: Cluster, agency: str) -> list[str]:
    with sqlite3.connect(cluster.root / "nodes" / agency / "state" / "node.db") as conn:
        return sorted(state for (state,) in conn.execute("SELECT state FROM outbox WHERE kind = 'transfer'"))


def state_at(cluster: Cluster, agency: str, code: str) -> str:
    return next((row["state"] for row in cluster.status(agency) if row["code"] == code), "")


@pytest.mark.timeout(300)
def test_shovels_carry_a_dossier_and_its_receipt_between_brokers(tmp_path: Path,
                                                                 brokers: tuple[RabbitNode, RabbitNode]) -> None:
    """The commune's node on the province's broker and the police's on the other, linked only by
    a shovel each way: the dossier reaches the police, its receipt comes back, the police's result
    reaches the commune and is receipted too; both audit logs verify."""
    province, national = brokers
    cluster = Cluster(tmp_path, broker=province.url)
    cluster.init(COMMUNE)
    cluster.broker = national.url
    cluster.init(POLICE)
    try:
        cluster.start(COMMUNE)
        cluster.start(POLICE)
        link(province, POLICE, national)
        link(national, COMMUNE, province)
        wait_until(lambda: shovels_running(province) and shovels_running(national), 30, "the shovels running")
        code = cluster.submit(1, procedure=PROCEDURE)
        cluster.done(COMMUNE, code, "register")
        wait_until(lambda: code in cluster.ready(POLICE, "identify"), 60, "the dossier at the police")
        cluster.done(POLICE, code, "identify")
        wait_until(lambda: code in cluster.ready(COMMUNE, "return"), 60, "the result back at the commune")
        cluster.done(COMMUNE, code, "return")
        wait_until(lambda: state_at(cluster, COMMUNE, code) == "completed", 60, "completed at the commune")
        wait_until(lambda: outbox_states(cluster, COMMUNE) == ["acknowledged"]
                   and outbox_states(cluster, POLICE) == ["acknowledged"], 60, "both transfers receipted")
    finally:
        cluster.stop_all()
    for broker, far_agency in ((province, POLICE), (national, COMMUNE)):  # the links hold nothing back
        with AmqpTransport(broker.url) as transport:
            assert transport.depth(AgencyCode(far_agency)) == 0
    for agency, broker in ((COMMUNE, province), (POLICE, national)):  # each node saw only its own broker
        assert {e["port"] for e in events_named(cluster.log(agency), "amqp.connected")} == {broker.port}
        assert cli("audit", "verify", "--config", cluster.config(agency)) == 0
