"""The gauges an operator acts on, set by the housekeeping from the node's database, its trust
store and its transport: outbox backlog, dead letters both ways, overdue dossiers, webhook
backlog, CRL age, checkpoint age and fork alarms."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.audit.entries import Entry, Event
from exchange.demo import samples
from exchange.node import metrics as metrics_module
from exchange.node.daemon import Daemon
from exchange.node.metrics import Metrics
from exchange.node.status import today
from exchange.node.transport import Message
from exchange.node.workflow import submit
from tests import in_process
from tests.agencies import BIRTH, COMMUNE, POLICE
from tests.in_process import Trio, settle
from tests.node_cluster import Cluster


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Trio]:
    with in_process.trio(Cluster(tmp_path)) as trio:
        yield trio


def sample(sequence: int) -> bytes:
    return samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=sequence)))


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} is not exported"
    return found


def test_the_outbox_backlog_and_its_oldest_age_follow_the_transfers(nodes: Trio) -> None:
    """A submitted dossier waits in the outbox (pending, with an age) until its receipts settle it."""
    commune, police, insurance, transport = nodes
    metrics = Metrics()
    metrics.refresh(commune)
    assert value(metrics, "exchange_outbox", state="pending") == 0
    assert value(metrics, "exchange_outbox_oldest_due_seconds") == 0
    submit(commune, sample(1))
    with commune.store.transaction() as conn:  # queued a minute ago, as a stuck transfer would be
        conn.execute("UPDATE outbox SET created = created - 60")
    metrics.refresh(commune)
    assert value(metrics, "exchange_outbox", state="pending") >= 1
    assert value(metrics, "exchange_outbox_oldest_due_seconds") >= 60
    settle(transport, commune, police, insurance)
    metrics.refresh(commune)
    assert value(metrics, "exchange_outbox", state="pending") == 0
    assert value(metrics, "exchange_outbox_oldest_due_seconds") == 0
    assert value(metrics, "exchange_outbox", state="acknowledged") >= 1


def test_dead_letters_are_counted_both_ways(nodes: Trio) -> None:
    """An outgoing transfer given up counts as ``out``; an envelope refused to the node, held by its
    transport, as ``in``; before the transport is asked, ``in`` is unknown (NaN), not zero."""
    commune, police, _insurance, transport = nodes
    metrics = Metrics()
    assert math.isnan(value(metrics, "exchange_dead_letters", direction="in"))
    submit(commune, sample(1))
    with commune.store.transaction():
        row = commune.store.due_outbox(1)[0]
        commune.store.mark_dead(row.id, "given up at the bound (test)")
    transport.publish(Message(POLICE, b"<not-an-envelope/>", "junk-1"))
    with transport.consume(police.agency) as consumer:
        while Daemon(police, transport).inbound(consumer, 0.05):
            pass
    metrics.refresh(commune)
    metrics.count_dead_letters(transport, commune.agency)
    assert value(metrics, "exchange_dead_letters", direction="out") == 1
    assert value(metrics, "exchange_dead_letters", direction="in") == 0
    at_police = Metrics()
    at_police.refresh(police)
    at_police.count_dead_letters(transport, police.agency)
    assert value(at_police, "exchange_dead_letters", direction="in") == 1
    assert value(at_police, "exchange_dead_letters", direction="out") == 0


def test_overdue_dossiers_and_the_working_days_they_are_late(nodes: Trio) -> None:
    """A step ready here past its due date makes its dossier overdue, late by the working days
    since; a step due today is not."""
    commune = nodes[0]
    calendar = commune.rules.calendar
    day = dt.date.fromisoformat(today(commune))
    three_ago = calendar.add(day, -3)
    late_by = calendar.working_days_between(three_ago, day)
    with commune.store.transaction():
        commune.store.make_ready("D-LATE", "register", str(commune.agency), three_ago.isoformat())
        commune.store.make_ready("D-TODAY", "register", str(commune.agency), day.isoformat())
    metrics = Metrics()
    metrics.refresh(commune)
    assert value(metrics, "exchange_overdue_dossiers") == 1
    assert value(metrics, "exchange_overdue_max_workdays") == late_by
    assert late_by >= 2


def test_the_webhook_backlog_counts_pushes_waiting(nodes: Trio) -> None:
    """Pushes queued for the agency system and not yet taken are the webhook backlog."""
    commune = nodes[0]
    with commune.store.transaction():
        for n in range(3):
            commune.store.webhook_enqueue(f"m-{n}", time.time())
    metrics = Metrics()
    metrics.refresh(commune)
    assert value(metrics, "exchange_webhook_backlog") == 3


def test_checkpoint_age_and_the_entries_no_checkpoint_covers(nodes: Trio) -> None:
    """Entries appended without a checkpoint are counted and the age is infinite; a checkpoint
    covers them and its age starts from when it was signed."""
    commune = nodes[0]
    with commune.store.transaction():
        commune.record(commune.entry(Event.NODE_STARTED))
    metrics = Metrics()
    metrics.refresh(commune)
    assert value(metrics, "exchange_audit_uncheckpointed_entries") >= 1
    assert value(metrics, "exchange_checkpoint_age_seconds") == math.inf
    commune.checkpointer.make()
    metrics.refresh(commune)
    assert value(metrics, "exchange_audit_uncheckpointed_entries") == 0
    assert 0 <= value(metrics, "exchange_checkpoint_age_seconds") < 60


def test_crl_age_is_the_time_since_its_this_update(nodes: Trio) -> None:
    """The CRL in force was issued at ``node init``: its age is the seconds since its thisUpdate."""
    commune = nodes[0]
    crl = commune.opener.trust.crls[0]
    metrics = Metrics()
    metrics.refresh(commune)
    expected = time.time() - crl.last_update_utc.timestamp()
    assert abs(value(metrics, "exchange_crl_age_seconds") - expected) < 5


def test_fork_alarms_are_counted_from_the_audit_log_and_survive_a_restart(nodes: Trio) -> None:
    """Each fork alarm in the audit log adds one to the counter, counted again in full by a new
    registry (a restarted node), never reset to zero."""
    commune = nodes[0]
    metrics = Metrics()
    metrics.refresh(commune)
    assert value(metrics, "exchange_witness_fork_alarms_total") == 0
    alarm = Entry(Event.FORK_DETECTED, str(commune.agency), counterpart=str(POLICE),
                  detail={"size": "9", "root": "00", "reason": "two different roots for size 9"})
    with commune.store.transaction():
        commune.record(alarm)
    metrics.refresh(commune)
    assert value(metrics, "exchange_witness_fork_alarms_total") == 1
    with commune.store.transaction():
        commune.record(commune.entry(Event.NODE_STARTED))
        commune.record(alarm)
    metrics.refresh(commune)
    assert value(metrics, "exchange_witness_fork_alarms_total") == 2
    restarted = Metrics()
    restarted.refresh(commune)
    assert value(restarted, "exchange_witness_fork_alarms_total") == 2


def test_housekeeping_recounts_no_more_often_than_its_interval(nodes: Trio,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Housekeeping passes come every half second; the counting queries run once per interval,
    and the transport is asked for dead letters only while it is up (given)."""
    commune, _police, _insurance, transport = nodes
    monkeypatch.setattr(metrics_module, "GAUGES_EVERY_S", 3600.0)
    metrics = Metrics()
    metrics.housekeep(commune, None)
    assert value(metrics, "exchange_webhook_backlog") == 0
    assert math.isnan(value(metrics, "exchange_dead_letters", direction="in"))
    with commune.store.transaction():
        commune.store.webhook_enqueue("m-1", time.time())
    metrics.housekeep(commune, transport)
    assert value(metrics, "exchange_webhook_backlog") == 0  # not recounted within the interval
    assert value(metrics, "exchange_dead_letters", direction="in") == 0  # first count with the transport up
    monkeypatch.setattr(metrics_module, "GAUGES_EVERY_S", 0.0)
    metrics.housekeep(commune, transport)
    assert value(metrics, "exchange_webhook_backlog") == 1
