"""Publish+consume throughput of a transport, for operators sizing a deployment.

A publisher thread sends ``size_kb`` KiB persistent messages in confirmed batches while a
consumer on the same queue fetches and acks in batches, for about ``seconds``; the figure is
messages fully delivered (published, confirmed, consumed, acked) per second.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from exchange.codes import AgencyCode
from exchange.node.transport import Consumer, Message, Transport

BENCH_AGENCY = AgencyCode("999.99.99.H99")
BATCH = 200
PUBLISHERS = {"amqp": 2, "embedded": 1}
"""Publishing workers per transport kind. With RabbitMQ two keep the pipe full while each waits
for its batch's confirms; SQLite serializes writers, so a second one only adds lock waits."""


@dataclass(frozen=True)
class BenchResult:
    messages: int
    seconds: float
    size_bytes: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def mib_per_second(self) -> float:
        return self.rate * self.size_bytes / (1024 * 1024)


def run(transport: Transport, *, size_kb: int = 10, seconds: float = 5.0,
        agency: AgencyCode = BENCH_AGENCY, batch: int = BATCH, publishers: int | None = None) -> BenchResult:
    transport.declare(agency)
    with transport.consume(agency, prefetch=batch * 2) as consumer:
        return _measure(transport, consumer, agency, size_kb * 1024, seconds, batch,
                        publishers or _workers(transport))


def _measure(transport: Transport, consumer: Consumer, agency: AgencyCode, size: int, seconds: float,
             batch: int, publishers: int) -> BenchResult:
    while leftovers := consumer.fetch(batch, 0.2):  # of an earlier run
        consumer.ack(leftovers)
    body = b"x" * size
    published = [0]
    stop = threading.Event()

    lock = threading.Lock()

    def publish() -> None:
        while not stop.is_set():
            transport.publish_many([Message(agency, body, str(uuid.uuid4())) for _ in range(batch)])
            with lock:
                published[0] += batch

    workers = [threading.Thread(target=publish, name=f"bench-publisher-{i}", daemon=True)
               for i in range(publishers)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    consumed = 0
    while time.perf_counter() - start < seconds or consumed < published[0]:
        if time.perf_counter() - start >= seconds:
            stop.set()
        got = consumer.fetch(batch, 1.0)
        if got:
            consumer.ack(got)
            consumed += len(got)
        elif stop.is_set() and not any(w.is_alive() for w in workers):
            break
    elapsed = time.perf_counter() - start
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    return BenchResult(consumed, elapsed, len(body))


def _workers(transport: Transport) -> int:
    return PUBLISHERS["embedded" if type(transport).__name__.startswith("Embedded") else "amqp"]
