"""A running node is woken when another process puts work in its outbox (exchange/node/wake.py):
the transaction that enqueues sends one datagram to the node's wake address once it commits, and
never when it rolls back."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from exchange.adapters.embedded import EmbeddedTransport
from exchange.demo import samples
from exchange.node import wake
from exchange.node.context import NodeContext
from exchange.node.workflow import submit
from tests.agencies import BIRTH, COMMUNE, INSURANCE, POLICE
from tests.transport_helpers import message


def listening(where: Path | str) -> tuple[wake.Listener, threading.Event]:
    """A listener at ``where`` (a node's state folder, or another key) and the event it sets."""
    woken = threading.Event()
    return wake.Listener(where, woken.set), woken


def test_a_wake_with_nobody_listening_is_nothing(tmp_path: Path) -> None:
    """No node runs there: the wake says nobody heard it, and neither fails nor waits."""
    assert wake.wake(tmp_path) is False
    listener, woken = listening(tmp_path)
    try:
        assert wake.wake(tmp_path) is True
        assert woken.wait(10)
    finally:
        listener.close()


def test_a_submission_wakes_the_node_once_committed(commune: NodeContext) -> None:
    listener, woken = listening(commune.config.state_dir)
    try:
        submit(commune, samples.to_bytes(samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2))))
        assert woken.wait(10)
    finally:
        listener.close()


def test_a_rolled_back_transaction_wakes_nobody(commune: NodeContext) -> None:
    calls: list[str] = []

    def enqueue_then_fail() -> None:
        with commune.store.transaction():
            commune.store.after_commit(lambda: calls.append("woken"))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        enqueue_then_fail()
    with commune.store.transaction():
        pass
    assert calls == []


def test_another_node_state_folder_is_another_address(tmp_path: Path) -> None:
    assert wake.address(tmp_path / "a") != wake.address(tmp_path / "b")
    listener, woken = listening(tmp_path / "a")
    try:
        wake.wake(tmp_path / "b")
        assert not woken.wait(0.5)
        wake.wake(tmp_path / "a")
        assert woken.wait(10)
    finally:
        listener.close()


def test_an_embedded_publish_wakes_the_queue_consumer(tmp_path: Path) -> None:
    """On the embedded transport a message published to a queue wakes whoever waits on that queue
    (its consumer, in another process), not the consumers of other queues."""
    with EmbeddedTransport(tmp_path / "transport.db") as transport:
        transport.declare(POLICE)
        transport.declare(INSURANCE)
        police, police_woken = listening(transport._wake_key(str(POLICE)))
        insurance, insurance_woken = listening(transport._wake_key(str(INSURANCE)))
        try:
            transport.publish(message(POLICE))
            assert police_woken.wait(10)
            assert not insurance_woken.wait(0.5)
        finally:
            police.close()
            insurance.close()
