"""The daemon loop in-process on the embedded transport: a poison message is isolated; signals
only set flags, so reloads land between transactions however many SIGHUPs arrive under traffic;
a reload takes good edits of node.toml, the CRL and the rules and keeps the old ones on bad edits;
the doors it is given are started, polled, told of deliveries and stopped."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from structlog.testing import capture_logs

from exchange.adapters.embedded import EmbeddedTransport
from exchange.adapters.webhooks import Webhooks
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope import pki
from exchange.node import intake
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.delivery import message_id_of
from exchange.node.dispatcher import Dispatcher
from exchange.node.doors import Door
from exchange.node.metrics import Metrics
from exchange.node.workflow import submit
from tests.node_cluster import COMMUNE, INSURANCE, POLICE, Cluster

STORM_DOSSIERS = 120


@pytest.fixture
def district(tmp_path: Path) -> Iterator[tuple[NodeContext, NodeContext, EmbeddedTransport]]:
    """A commune and a police node (contexts, no processes) on one embedded transport, every
    queue of the birth route declared."""
    cluster = Cluster(tmp_path)
    cluster.init(COMMUNE, POLICE)
    commune = NodeContext.open(NodeConfig.load(cluster.config(COMMUNE)))
    police = NodeContext.open(NodeConfig.load(cluster.config(POLICE)))
    transport = EmbeddedTransport(commune.config.embedded_transport)
    for agency in (COMMUNE, POLICE, INSURANCE):
        transport.declare(AgencyCode(agency))
    yield commune, police, transport
    transport.close()
    commune.close()
    police.close()


def birth_dossier(sequence: int) -> bytes:
    spec = samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode("2.000986"), size_kb=2, sequence=sequence)
    return samples.to_bytes(samples.sample_dossier(spec))


def send(commune: NodeContext, transport: EmbeddedTransport, count: int, first: int = 1) -> list[str]:
    """Submit ``count`` dossiers at the commune and publish its outbox; returns their codes."""
    codes = [str(submit(commune, birth_dossier(i))) for i in range(first, first + count)]
    Dispatcher(commune, transport, Metrics()).dispatch(limit=10 * count)
    return codes


@contextlib.contextmanager
def signals_ignored(*signums: signal.Signals) -> Iterator[None]:
    """Outside the daemon's run, the storm's signals must not end the test process."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["log_level"] in ("error", "critical") or e.get("exc_info")]


class RecordingDoor(Door):
    """A door that notes what the daemon asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.delivered_ids: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def poll(self, ctx: NodeContext) -> int:
        self.calls.append("poll")
        return 0

    def delivered(self, ctx: NodeContext, message_ids: Sequence[str]) -> None:
        assert ctx.store.conn.in_transaction, "told of deliveries inside the transaction that records them"
        self.delivered_ids.extend(message_ids)

    def stop(self) -> None:
        self.calls.append("stop")


def test_poison_message_is_isolated(district: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """A message that makes processing fail (a fault injected for one message id) is refused as
    an internal error and dead-lettered; the others of its window are taken in."""
    commune, police, transport = district
    codes = [str(submit(commune, birth_dossier(i))) for i in range(1, 4)]
    transfers = [r for r in commune.store.due_outbox(10) if r.recipient == POLICE]
    assert len(transfers) == 3
    Dispatcher(commune, transport, Metrics()).dispatch()
    poison = transfers[1].message_id
    original = intake._take_transfer

    def faulty(ctx: NodeContext, env: intake.VerifiedEnvelope, at: dt.datetime | None) -> None:
        if env.header.message_id == poison:
            raise RuntimeError("injected fault")
        original(ctx, env, at)

    receiver = Daemon(police, transport)
    consumer = transport.consume(AgencyCode(POLICE))
    with mock.patch.object(intake, "_take_transfer", faulty):
        assert receiver.inbound(consumer, 2.0)
    consumer.close()
    taken = {code for (code,) in police.store.conn.execute("SELECT code FROM dossiers")}
    assert taken == {codes[0], codes[2]}
    (letter,) = transport.dead_letters(AgencyCode(POLICE))
    assert letter.message.message_id == poison
    assert letter.reason.startswith("internal-error: RuntimeError: injected fault")
    refused = police.store.conn.execute("SELECT COUNT(*) FROM audit_entries WHERE event = 'refused'").fetchone()
    assert refused[0] == 1


def test_first_sigterm_drains_second_exits_at_once(
        district: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """The first SIGTERM asks the loop to drain; the second ends the process with exit code 1
    (os._exit is replaced to observe it, the one fault this test injects)."""
    commune, _, transport = district
    daemon = Daemon(commune, transport)
    with mock.patch("exchange.node.daemon.os._exit") as exit_now:
        daemon._on_term(signal.SIGTERM, None)
        assert daemon.stopping.is_set()
        exit_now.assert_not_called()
        daemon._on_term(signal.SIGTERM, None)
        exit_now.assert_called_once_with(1)


def test_sighup_storm_under_traffic(district: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """SIGHUPs every two milliseconds while windows of transfers are committed: the loop reloads
    between transactions, logs no error, and every dossier arrives and is delivered exactly once;
    the injected door is started, polled, told of each delivery once, and stopped."""
    commune, police, transport = district
    codes = send(commune, transport, STORM_DOSSIERS)
    door = RecordingDoor()
    receiver = Daemon(police, transport, doors=[door])

    def arrived() -> int:
        with sqlite3.connect(police.config.database) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM inbox WHERE delivered = 1").fetchone()[0])

    finished = threading.Event()

    def storm() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not finished.is_set() and arrived() < STORM_DOSSIERS:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=storm)
    with capture_logs() as events, signals_ignored(signal.SIGHUP, signal.SIGTERM):
        sender.start()
        try:
            assert receiver.run() == 0
        finally:
            finished.set()
            sender.join()
    assert errors(events) == []
    assert sum(e["event"] == "rules.reloaded" for e in events) >= 2
    taken = [code for (code,) in police.store.conn.execute("SELECT code FROM dossiers")]
    assert sorted(taken) == sorted(codes)
    files = sorted(police.config.delivery_dir.glob("*.xml"))
    assert all(sum(code in f.name for f in files) == 1 for code in codes)  # each dossier once
    assert sorted(door.delivered_ids) == sorted(message_id_of(f.name) for f in files)
    assert (door.calls[0], door.calls[-1]) == ("start", "stop")
    assert "poll" in door.calls


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), "utf-8")


def events_named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_reload_takes_good_edits_and_keeps_the_old_on_bad_ones(
        tmp_path: Path, district: tuple[NodeContext, NodeContext, EmbeddedTransport]) -> None:
    """A reload puts a new webhook URL, checkpoint interval and CRL in force and logs where each
    came from; a bad node.toml, a bad webhook URL or a bad CRL is refused with the reason and the
    old one stays; a setting that needs a restart is named and left as it was."""
    _, police, transport = district
    daemon = Daemon(police, transport, doors=[Webhooks()])
    toml = police.config.source
    crl = toml.parent / "crl.pem"
    crl.write_bytes(pki.CertificateAuthority.load(tmp_path / "ca").crl().public_bytes(Encoding.PEM))
    assert 'crl = "crl.pem"' in toml.read_text("utf-8")  # node init configures the CA's CRL
    rewrite(toml, "checkpoint_every_entries = 1000", "checkpoint_every_entries = 7")
    rewrite(toml, "metrics_port = 0", "metrics_port = 9999")
    (toml.parent / "node.toml").write_text(toml.read_text("utf-8")
                                          + '\n[agency_system]\nwebhook = "http://127.0.0.1:9/in"\n', "utf-8")
    with capture_logs() as events:
        assert daemon.reload()
    assert (police.config.webhook, police.config.crl, police.config.metrics_port) == (
        "http://127.0.0.1:9/in", crl, 0)
    assert police.checkpointer.every_entries == 7
    assert police.opener.trust.crls
    assert errors(events) == []
    (loaded,) = events_named(events, "config.reloaded")
    assert loaded["config"] == str(toml)
    (waiting,) = events_named(events, "config.restart_needed")
    assert waiting["settings"] == ["metrics_port"]
    (trust,) = events_named(events, "trust.reloaded")
    assert trust["crl"] == str(crl)
    assert trust["crl_number"]
    assert trust["crl_next_update"]
    (rules,) = events_named(events, "rules.reloaded")
    assert (rules["rules_dir"], rules["digest"]) == (str(police.rulebook.directory), police.rules.digest)

    opener = police.opener
    rewrite(toml, 'webhook = "http://127.0.0.1:9/in"', 'webhook = "file:///etc/passwd"')
    crl.write_bytes(b"-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    with capture_logs() as events:
        assert not daemon.reload()
    assert police.config.webhook == "http://127.0.0.1:9/in"
    assert police.opener is opener
    (refused,) = events_named(events, "config.reload_refused")
    assert "file:///etc/passwd" in refused["error"]
    (refused,) = events_named(events, "trust.reload_refused")
    assert str(crl) in refused["error"]
    assert events_named(events, "rules.reloaded")  # the rules were fine, and loaded

    rewrite(toml, "checkpoint_every_entries = 7", 'checkpoint_every_entries = "often"')
    with capture_logs() as events:
        assert not daemon.reload()
    assert police.checkpointer.every_entries == 7
    assert events_named(events, "config.reload_refused")
