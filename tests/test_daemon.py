"""The daemon loop in-process on the embedded transport: a poison message is isolated,
dead-lettered and audited while the rest of its window goes through."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from exchange.adapters.embedded import EmbeddedTransport
from exchange.codes import AgencyCode
from exchange.node import workflow
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from tests.node_cluster import COMMUNE, POLICE, Cluster


def test_poison_message_is_isolated(tmp_path: Path) -> None:
    """A message that makes processing fail (a fault injected for one message id) is refused as
    an internal error and dead-lettered; the others of its window are taken in."""
    district = Cluster(tmp_path)
    district.init(COMMUNE, POLICE)
    commune = NodeContext.open(NodeConfig.load(district.config(COMMUNE)))
    police = NodeContext.open(NodeConfig.load(district.config(POLICE)))
    transport = EmbeddedTransport(commune.config.embedded_transport)
    try:
        transport.declare(AgencyCode(POLICE))
        codes = [district.submit(i) for i in range(1, 4)]
        rows = commune.store.due_outbox(10)
        transfers = [r for r in rows if r.recipient == POLICE]
        assert len(transfers) == 3
        sender = Daemon(commune, transport)
        sender.dispatch()
        poison = transfers[1].message_id
        original = workflow._take_transfer

        def faulty(ctx: NodeContext, env: workflow.VerifiedEnvelope) -> None:
            if env.header.message_id == poison:
                raise RuntimeError("injected fault")
            original(ctx, env)

        receiver = Daemon(police, transport)
        consumer = transport.consume(AgencyCode(POLICE))
        with mock.patch.object(workflow, "_take_transfer", faulty):
            assert receiver.inbound(consumer, 2.0)
        consumer.close()
        taken = {code for (code,) in police.store.conn.execute("SELECT code FROM dossiers")}
        assert taken == {codes[0], codes[2]}
        (letter,) = transport.dead_letters(AgencyCode(POLICE))
        assert letter.message.message_id == poison
        assert letter.reason.startswith("internal-error: RuntimeError: injected fault")
        refused = police.store.conn.execute("SELECT COUNT(*) FROM audit_entries WHERE event = 'refused'").fetchone()
        assert refused[0] == 1
    finally:
        transport.close()
        commune.close()
        police.close()


def test_first_sigterm_drains_second_exits_at_once(tmp_path: Path) -> None:
    """The first SIGTERM asks the loop to drain; the second ends the process with exit code 1
    (os._exit is replaced to observe it, the one fault this test injects)."""
    import signal

    district = Cluster(tmp_path)
    district.init(COMMUNE)
    ctx = NodeContext.open(NodeConfig.load(district.config(COMMUNE)))
    transport = EmbeddedTransport(ctx.config.embedded_transport)
    try:
        daemon = Daemon(ctx, transport)
        with mock.patch("exchange.node.daemon.os._exit") as exit_now:
            daemon._on_term(signal.SIGTERM, None)
            assert daemon.stopping.is_set()
            exit_now.assert_not_called()
            daemon._on_term(signal.SIGTERM, None)
            exit_now.assert_called_once_with(1)
    finally:
        transport.close()
        ctx.close()
