"""The dispatcher's count of attempts stays true through outages: only confirmed publications
count and the first is audited as published, so reconcile finds no false gap; an outage never
dead-letters a receipt, and a duplicate never revives a dead one; a transfer is given up only
when its last publication also went unanswered."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
import structlog

from exchange.adapters.embedded import EmbeddedTransport
from exchange.audit.bundle import export
from exchange.audit.entries import Entry, Event
from exchange.audit.reconcile import reconcile
from exchange.audit.sources import BundleSource, DatabaseSource
from exchange.demo import samples
from exchange.envelope.messages import Ack, receipt_element
from exchange.envelope.messages import Outcome as ReceiptOutcome
from exchange.envelope.model import Header, Kind
from exchange.errors import TransportUnavailable
from exchange.node import intake
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.dispatcher import Dispatcher
from exchange.node.metrics import Metrics
from exchange.node.transport import Message
from exchange.node.workflow import submit
from exchange.retry import TRANSFER_RETRANSMISSION
from exchange.store import schema
from exchange.store.node import InboxRecord, OutboxRow, Store
from exchange.store.states import OutboxState, Outcome
from tests.agencies import BIRTH, COMMUNE, INSURANCE, POLICE
from tests.node_cluster import Cluster


class Outage(EmbeddedTransport):
    """The embedded transport whose publications fail while ``down`` (a fault injected at the
    port; everything else is the real transport)."""

    down = False

    def publish_many(self, messages: Sequence[Message]) -> None:
        self._up()
        super().publish_many(messages)

    def publish(self, message: Message, delay: float = 0.0) -> None:
        self._up()
        super().publish(message, delay)

    def _up(self) -> None:
        if self.down:
            raise TransportUnavailable("injected: the broker is down")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeContext, NodeContext, Outage]]:
    """The commune and the police as contexts over one embedded transport that can go down."""
    cluster = Cluster(tmp_path)
    cluster.init(str(COMMUNE), str(POLICE))
    with ExitStack() as stack:
        commune, police = (stack.enter_context(NodeContext.open(NodeConfig.load(cluster.config(str(a)))))
                           for a in (COMMUNE, POLICE))
        transport = stack.enter_context(Outage(commune.config.embedded_transport))
        for agency in (COMMUNE, POLICE, INSURANCE):
            transport.declare(agency)
        yield commune, police, transport


def dispatch_now(ctx: NodeContext, transport: Outage) -> int:
    """Make every outbox row due, then dispatch once (the time the backoff would have waited)."""
    with ctx.store.transaction() as conn:
        conn.execute("UPDATE outbox SET next_attempt = 0")
    return Dispatcher(ctx, transport, Metrics()).dispatch()


def receive(ctx: NodeContext, transport: Outage) -> None:
    with transport.consume(ctx.agency) as consumer:
        while Daemon(ctx, transport).inbound(consumer, 0.5):
            pass


def events(ctx: NodeContext, message_id: str) -> list[Event]:
    return [Entry.decode(data)[1].event for _, data in ctx.audit.entries()
            if Entry.decode(data)[1].message_id == message_id]


def dossier(sequence: int) -> bytes:
    return samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2,
                                                                      sequence=sequence)))


def test_the_first_confirmed_publication_is_published(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """Publications that failed during an outage are not attempts: the first confirmed one is
    audited as published, not retransmitted."""
    commune, _, transport = pair
    submit(commune, dossier(1))
    transport.down = True
    for _ in range(3):
        assert dispatch_now(commune, transport) == 0
    transport.down = False
    assert dispatch_now(commune, transport) > 0
    (message_id,) = [m for (m,) in commune.store.conn.execute("SELECT message_id FROM outbox WHERE recipient = ?",
                                                              (str(POLICE),))]
    row = commune.store.outbox_by_message(message_id)
    assert row is not None
    assert (row.attempts, row.failures) == (1, 0)
    assert events(commune, row.message_id) == [Event.SEALED, Event.PUBLISHED]


def test_reconcile_is_clean_after_an_outage(tmp_path: Path, pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """After the broker was down for a node's first publications, reconciling the two nodes'
    logs finds every transfer's other half."""
    commune, police, transport = pair
    for sequence in range(1, 4):
        submit(commune, dossier(sequence))
    transport.down = True
    for _ in range(2):
        assert dispatch_now(commune, transport) == 0
    transport.down = False
    assert dispatch_now(commune, transport) > 0
    receive(police, transport)
    dispatch_now(police, transport)
    receive(commune, transport)
    bundles = []
    for ctx in (commune, police):
        source = DatabaseSource(ctx.config.database)
        export(source, tmp_path / f"{ctx.agency}.bundle")
        bundles.append(BundleSource(tmp_path / f"{ctx.agency}.bundle"))
    matched, gaps = reconcile(*bundles)
    assert gaps == []
    assert matched >= 3


def test_an_outage_never_dead_letters_a_receipt(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """A receipt whose publication fails far more often than any retry bound is sent when the
    broker is back, never dead-lettered."""
    commune, police, transport = pair
    submit(commune, dossier(1))
    dispatch_now(commune, transport)
    receive(police, transport)
    transport.down = True
    for _ in range(3 * TRANSFER_RETRANSMISSION.attempts):
        assert dispatch_now(police, transport) == 0
    transport.down = False
    assert dispatch_now(police, transport) == 1
    receipts = police.store.conn.execute("SELECT state FROM outbox WHERE kind = 'receipt'").fetchall()
    assert receipts == [(OutboxState.SENT.value,)]
    assert not [e for _, d in police.audit.entries() if (e := Entry.decode(d)[1]).event is Event.DEAD_LETTERED]


def test_a_duplicate_does_not_revive_a_dead_receipt(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """A receipt an operator must look at (dead-lettered) stays dead when its envelope comes again;
    a sent one is sent again."""
    commune, police, _ = pair
    submit(commune, dossier(1))
    with police.store.transaction() as conn:
        conn.execute("INSERT INTO outbox (message_id, recipient, kind, body, envelope_sha256, state, next_attempt, "
                     "created) VALUES ('dead-receipt', ?, 'receipt', x'00', 'x', 'dead', 9e9, 0), "
                     "('sent-receipt', ?, 'receipt', x'00', 'x', 'sent', 9e9, 0)", (str(COMMUNE), str(COMMUNE)))
        assert not police.store.resend_receipt("dead-receipt")
        assert police.store.resend_receipt("sent-receipt")
    states = dict(police.store.conn.execute("SELECT message_id, state FROM outbox WHERE kind = 'receipt'"))
    assert states == {"dead-receipt": "dead", "sent-receipt": "pending"}


def test_a_transfer_is_given_up_after_its_last_publication_goes_unanswered(
        pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """The last allowed publication is made and waited for; the transfer is dead-lettered only
    when it falls due again without a receipt."""
    commune, _, transport = pair
    submit(commune, dossier(1))
    last = TRANSFER_RETRANSMISSION.attempts
    with commune.store.transaction() as conn:
        conn.execute("UPDATE outbox SET attempts = ?, state = 'published' WHERE recipient = ?", (last - 1, str(POLICE)))
    dispatch_now(commune, transport)
    row = commune.store.conn.execute("SELECT state, attempts FROM outbox WHERE recipient = ?",
                                     (str(POLICE),)).fetchall()
    assert [(OutboxState(s), a) for s, a in row] == [(OutboxState.PUBLISHED, last)] * len(row)
    dispatch_now(commune, transport)
    dead = commune.store.dead_outbox()
    assert {r.recipient for r in dead} == {str(POLICE)}
    assert all(r.last_error == f"no receipt after {last} publications" for r in dead)


def test_a_version_one_database_gains_the_failure_count(tmp_path: Path) -> None:
    """A database at schema version 1 is migrated to count failed publications apart, rows intact."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(schema.MIGRATIONS[0])
        conn.execute("INSERT INTO outbox (message_id, recipient, kind, body, envelope_sha256, attempts, next_attempt, "
                     "created) VALUES ('m', 'r', 'transfer', x'00', 'x', 3, 0, 0)")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = Store(path)
    try:
        assert schema.version(store.conn) == schema.VERSION >= 2
        row = store.outbox_by_message("m")
        assert row is not None
        assert (row.attempts, row.failures) == (3, 0)
    finally:
        store.close()


def test_what_an_outage_held_back_goes_when_it_ends(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """Transfers whose publications failed during an outage are published on the first pass after
    the transport is back, not at the end of their own backoff (seconds later)."""
    commune, _, transport = pair
    submit(commune, dossier(1))
    daemon = Daemon(commune, transport)
    daemon.consumer = transport.consume(commune.agency)
    transport.down = True
    for _ in range(3):
        dispatch_now(commune, transport)  # three failures: the next try is 3.2 s or more away
    backoff_ends = min(r for (r,) in commune.store.conn.execute("SELECT next_attempt FROM outbox"))
    daemon.link.failed(TransportUnavailable("the loop met the outage too"))
    transport.down = False
    while commune.store.conn.execute("SELECT COUNT(*) FROM outbox WHERE attempts = 0").fetchone()[0]:
        assert time.time() < backoff_ends, "published only when the backoff ended"
        daemon.tick(wait=0.05)
    assert daemon.link.up
    daemon.consumer.close()


# A refusal binds to the bytes it refuses; a poison message is answered ------------------------

def _transfer_row(ctx: NodeContext, recipient: str) -> OutboxRow:
    (message_id,) = [m for (m,) in ctx.store.conn.execute(
        "SELECT message_id FROM outbox WHERE recipient = ? AND kind = 'transfer'", (recipient,))]
    row = ctx.store.outbox_by_message(message_id)
    assert row is not None
    return row


def _state(ctx: NodeContext, message_id: str) -> OutboxState | None:
    row = ctx.store.outbox_by_message(message_id)
    return row.state if row else None


def _tampered(body: bytes) -> bytes:
    """The genuine envelope with a comment after its Signature (xmlsec1 still accepts it)."""
    end = body.rindex(b"</")
    return body[:end] + b"<!-- altered in transit -->" + body[end:]


def _dossiers_taken(ctx: NodeContext, message_id: str) -> int:
    return events(ctx, message_id).count(Event.RECEIVED)


def test_a_refusal_of_a_tampered_copy_is_not_final(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """A refusal whose digest is not the sent envelope's leaves the transfer due, and the genuine
    copy that follows is acknowledged and taken in once."""
    commune, police, transport = pair
    submit(commune, dossier(1))
    row = _transfer_row(commune, str(POLICE))
    transport.publish(Message(POLICE, _tampered(row.body), row.message_id))
    receive(police, transport)
    dispatch_now(police, transport)  # the refusal receipt goes back
    with structlog.testing.capture_logs() as logs:
        receive(commune, transport)
    assert any(e["event"] == "receipt.digest_mismatch" for e in logs)
    assert _state(commune, row.message_id) in OutboxState.due()
    dispatch_now(commune, transport)  # the genuine copy
    receive(police, transport)
    dispatch_now(police, transport)
    receive(commune, transport)
    assert _state(commune, row.message_id) is OutboxState.ACKNOWLEDGED
    assert _dossiers_taken(police, row.message_id) == 1


def test_a_refused_copy_does_not_make_the_genuine_one_a_duplicate(
        pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """A verified copy refused and recorded under a message id does not block a different copy of
    the same message: the later copy is judged on its own and replaces the refused record."""
    commune, police, transport = pair
    submit(commune, dossier(1))
    row = _transfer_row(commune, str(POLICE))
    with police.store.transaction():
        police.store.record_inbox(InboxRecord(row.message_id, str(COMMUNE), "transfer", row.dossier, row.step,
                                              "0" * 64, Outcome.REFUSED, reason="not-authorized"), time.time())
    assert police.store.known(row.message_id, digest="0" * 64) is not None
    assert police.store.known(row.message_id, digest=row.envelope_sha256) is None
    dispatch_now(commune, transport)
    receive(police, transport)
    assert _dossiers_taken(police, row.message_id) == 1
    assert police.store.known(row.message_id, digest=row.envelope_sha256) is not None
    assert police.store.conn.execute("SELECT outcome FROM inbox").fetchall() == [(Outcome.ACCEPTED.value,)]
    dispatch_now(police, transport)
    receive(commune, transport)
    assert _state(commune, row.message_id) is OutboxState.ACKNOWLEDGED


def test_an_acceptance_of_other_bytes_is_final_and_logged(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """An acceptance naming other bytes of the sent message settles the transfer (only a copy this
    node signed can be accepted) and is logged as a digest mismatch."""
    commune, police, transport = pair
    submit(commune, dossier(1))
    row = _transfer_row(commune, str(POLICE))
    seal = police.signer.seal
    ack = Ack(row.message_id, "f" * 64, ReceiptOutcome.ACCEPTED)
    body = seal(Header(kind=Kind.RECEIPT, sender=POLICE, recipient=COMMUNE), receipt_element((ack,), None))
    transport.publish(Message(COMMUNE, body, "receipt-of-other-bytes"))
    with structlog.testing.capture_logs() as logs:
        receive(commune, transport)
    assert [e.get("outcome") for e in logs if e["event"] == "receipt.digest_mismatch"] == ["accepted"]
    assert _state(commune, row.message_id) is OutboxState.ACKNOWLEDGED


def test_a_poison_message_gets_a_refusal_receipt(pair: tuple[NodeContext, NodeContext, Outage],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery that breaks the recipient's own code is dead-lettered and its sender receives a
    refusal with reason internal-error, which ends its retransmissions."""
    commune, police, transport = pair
    submit(commune, dossier(1))
    row = _transfer_row(commune, str(POLICE))
    dispatch_now(commune, transport)

    def broken(ctx: NodeContext, env: object) -> None:
        raise RuntimeError("injected: a bug in taking a transfer in")

    monkeypatch.setattr(intake, "_take_transfer", broken)
    receive(police, transport)
    monkeypatch.undo()
    assert [d.reason for d in transport.dead_letters(POLICE)][0].startswith("internal-error")
    dispatch_now(police, transport)
    receive(commune, transport)
    assert _state(commune, row.message_id) is OutboxState.REFUSED
    receipt = [e for _, d in commune.audit.entries()
               if (e := Entry.decode(d)[1]).event is Event.RECEIPT_RECEIVED and e.message_id == row.message_id]
    assert [e.detail["reason"] for e in receipt] == ["internal-error"]


def test_delivered_files_are_utf8_with_a_declaration(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """The file the agency system takes is UTF-8 with an XML declaration, and Vietnamese is written
    as itself, never as character references."""
    commune, police, transport = pair
    submit(commune, dossier(1))
    dispatch_now(commune, transport)
    receive(police, transport)
    assert Daemon(police, transport).deliverer.deliver() == 1
    (delivered,) = police.config.delivery_dir.glob("transfer-*.xml")
    data = delivered.read_bytes()
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert b"&#" not in data
    text = data.decode("utf-8")
    assert any(letter in text for letter in "ễạảấầẩậắằặđơưĐ")


def test_the_origin_sees_its_handed_off_steps_move_on(pair: tuple[NodeContext, NodeContext, Outage]) -> None:
    """At the origin a handed-off step is `sent` once sealed and `received` once its performer's
    receipt comes back, not `pending` as if nothing had happened."""
    commune, police, transport = pair
    code = str(submit(commune, dossier(1)))

    def states() -> dict[str, str]:
        return {s.step: s.state.value for s in commune.store.steps(code)}

    assert states() == {"receive": "done", "residence": "sent", "insurance": "sent", "return": "pending"}
    dispatch_now(commune, transport)
    receive(police, transport)
    dispatch_now(police, transport)
    receive(commune, transport)
    assert states() == {"receive": "done", "residence": "received", "insurance": "sent", "return": "pending"}
