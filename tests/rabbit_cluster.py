"""A private three-node RabbitMQ cluster for tests and benchmarks, built on tests/rabbit_node.py:
never the host's broker.

Each node has its own folder under one temporary folder, its own node name
(``exch-test-XXXX@localhost``), free loopback ports for AMQP and Erlang distribution, and the
Erlang cookie the three share (and nobody else has). The nodes start together; the second and
third then join the first (``rabbitmqctl -n NAME stop_app``, ``join_cluster FIRST``,
``start_app``). ``private_cluster()`` always stops every node and removes the folder, even when
starting failed halfway.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exchange.node.config import NodeConfig, split_password
from tests.rabbit_node import RabbitNode, RabbitNodeError

SIZE = 3


def list_brokers(path: Path, *urls: str) -> None:
    """node.toml's ``broker`` (one URL, as ``node init`` writes it) replaced by a list of ``urls``,
    without their password (``node init`` put it in broker.secret, which applies to each)."""
    text = path.read_text("utf-8")
    line = next(line for line in text.splitlines() if line.startswith("broker = "))
    listed = ", ".join(f'"{split_password(url)[0]}"' for url in urls)
    path.write_text(text.replace(line, f"broker = [{listed}]"), "utf-8")
    if NodeConfig.load(path).brokers != urls:
        raise AssertionError(f"{path}: the brokers did not load as listed")


class RabbitCluster:
    """Three private nodes clustered together: their URLs, and what a loss test does to them."""

    def __init__(self, root: Path, size: int = SIZE) -> None:
        cookie = secrets.token_hex(16).upper()
        self.root = root
        self.nodes = [RabbitNode(root / f"node-{i + 1}", cookie=cookie) for i in range(size)]

    @property
    def urls(self) -> list[str]:
        """The guest user's URL on each node, in node order: what a node's ``broker`` list holds."""
        return [node.url for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.await_startup()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.start_app()
        running = self.running_members()
        if running != {node.name for node in self.nodes}:
            raise RabbitNodeError(f"the cluster has {sorted(running)} running, not all of its {len(self.nodes)} nodes")

    def any_running(self) -> RabbitNode:
        """A node whose broker takes logins, to ask about the cluster."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(RabbitNodeError):
                    node.await_startup(timeout=2)
                    return node
        raise RabbitNodeError("no node of the cluster is running")

    def running_members(self) -> set[str]:
        status = json.loads(self.any_running().ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def queue_members(self, name: str) -> list[str]:
        """The members of a quorum queue (the nodes that hold a replica), as ``rabbitmq-queues
        quorum_status`` lists them."""
        node = self.any_running()
        out = node.ctl("list_queues", "name", "type", "members", "--formatter", "json")
        for row in json.loads(out):
            if row["name"] == name:
                if row["type"] != "quorum":
                    raise RabbitNodeError(f"{name} is a {row['type']} queue, not a quorum queue")
                return sorted(row["members"])
        raise RabbitNodeError(f"no queue {name} on the cluster")

    def quorum_status(self, name: str) -> dict[str, str]:
        """``rabbitmq-queues -n NODE quorum_status NAME``: each member's Raft state (leader, follower…)."""
        rows = json.loads(self.any_running().ctl("quorum_status", name, "--formatter", "json",
                                                 command="rabbitmq-queues"))
        return {row["Node Name"]: row["Raft State"] for row in rows}

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@contextlib.contextmanager
def private_cluster(size: int = SIZE) -> Iterator[RabbitCluster]:
    """A started private cluster of ``size`` nodes in a fresh folder under /tmp; stopped and
    removed at the end, even when starting it failed halfway."""
    root = Path(tempfile.mkdtemp(prefix="exch-cluster-", dir="/tmp"))
    cluster = None
    try:
        cluster = RabbitCluster(root, size)
        cluster.start()
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
