"""Transports for tests: the real local RabbitMQ (fail in CI when it is down) and embedded files.

Tests here only publish and consume on the host's broker, on fresh queues; whatever stops, kills or
reconfigures a broker uses a private node (``private_rabbit`` in conftest, tests/rabbit_node.py)."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from exchange.adapters.amqp import AmqpTransport, BrokerSettings, dead_queue_name, queue_name
from exchange.codes import AgencyCode
from exchange.node.transport import Message, Transport

BROKER = os.environ.get("EXCHANGE_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2F")


@dataclass(frozen=True)
class Broker:
    """The broker a contract test runs on: the host's in plain AMQP, or a private TLS node."""

    url: str = BROKER
    ca_file: Path | None = None

    def open(self, **kwargs: Any) -> AmqpTransport:
        return AmqpTransport(self.url, ca_file=self.ca_file, **kwargs)

    def parameters(self) -> pika.URLParameters:
        return BrokerSettings(self.url, self.ca_file).parameters()

    def argv(self) -> list[str]:
        """The broker for a child process's command line: the URL, then the CA file if any."""
        return [self.url] + ([str(self.ca_file)] if self.ca_file else [])


def broker_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


def require_broker() -> None:
    """RabbitMQ must be up: a failure in CI, a skip on a laptop without it."""
    if broker_reachable():
        return
    if os.environ.get("CI"):
        pytest.fail("RabbitMQ is not reachable at 127.0.0.1:5672; .ci/run must start it")
    pytest.skip("RabbitMQ is not running here")


def fresh_agency() -> AgencyCode:
    """An agency code no other test uses, so that queues never carry another test's messages."""
    return AgencyCode(f"{random.randint(100, 999)}.{random.randint(10, 99)}.77.H49")


def message(agency: AgencyCode, body: bytes = b"<Envelope/>", **headers: str) -> Message:
    return Message(agency, body, str(uuid.uuid4()), headers)


def delete_queues(*agencies: AgencyCode, url: str = BROKER, broker: Broker | None = None) -> None:
    """Remove test queues from the broker (the host's unless ``url`` or ``broker`` names another)."""
    conn = pika.BlockingConnection(broker.parameters() if broker else pika.URLParameters(url))
    try:
        channel = conn.channel()
        for agency in agencies:
            for name in (queue_name(agency), dead_queue_name(agency)):
                channel.queue_delete(name)
    finally:
        conn.close()


def wait_for_broker(timeout: float = 90, url: str = BROKER) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return
        except pika.exceptions.AMQPError:
            time.sleep(0.5)
    raise AssertionError("the broker did not come back")


def connected(transport: Transport, timeout: float = 30.0) -> Transport:
    """``transport`` once it is connected: calls fail fast while it is not (by design), and on a
    loaded machine the first connection can take longer than the constructor waits."""
    deadline = time.monotonic() + timeout
    while not transport.health().connected:
        if time.monotonic() > deadline:
            raise AssertionError(f"not connected after {timeout:.0f} s: {transport.health().last_error}")
        time.sleep(0.05)
    return transport
