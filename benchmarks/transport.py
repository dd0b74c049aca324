"""Transport throughput against raw pika, measured in the same run.

    python benchmarks/transport.py [--broker URL] [--size-kb 10] [--seconds 5] [--rounds 3]

Messages per second fully delivered (persistent, publisher-confirmed, consumed, acked) for the
RabbitMQ adapter and the embedded transport, and for a minimal raw-pika pair on the same queue
kind with the same bytes: an asynchronous publisher keeping a window of unconfirmed messages,
and a consumer acking in batches. Aims: the adapter within 80% of raw pika; embedded above 5,000/s.
The adapter runs twice, on a quorum queue (the default, ``[transport] queue_type = quorum``) and on
a classic one, each on a fresh queue deleted afterwards: the price of the replicated queue type
on this broker (on a single node it still writes a Raft log; on a cluster it also waits for a
majority of the replicas).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pika

from exchange.adapters.amqp import AmqpTransport, dead_queue_name, queue_name
from exchange.adapters.embedded import EmbeddedTransport
from exchange.bench import transport as transport_bench
from exchange.codes import AgencyCode

RAW_QUEUE = "exchange.bench.raw"
WINDOW = 200


def raw_pika(url: str, size_kb: int, seconds: float) -> float:
    """Minimal raw pika: SelectConnection publisher with async confirms, blocking consumer."""
    params = pika.URLParameters(url)
    setup = pika.BlockingConnection(params)
    channel = setup.channel()
    channel.queue_declare(RAW_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_purge(RAW_QUEUE)
    setup.close()
    body = b"x" * (size_kb * 1024)
    consumed = [0]
    done = threading.Event()

    def consume() -> None:
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=WINDOW)
        pending = [0]

        def on_message(c: object, method: pika.spec.Basic.Deliver, props: object, data: bytes) -> None:
            consumed[0] += 1
            pending[0] += 1
            if pending[0] >= 100:
                ch.basic_ack(method.delivery_tag, multiple=True)
                pending[0] = 0

        ch.basic_consume(RAW_QUEUE, on_message)
        while not done.is_set():
            conn.process_data_events(time_limit=0.1)
        conn.close()

    state = {"sent": 0, "confirmed": 0, "stop": False}

    def on_open(conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=lambda ch: ch.confirm_delivery(
            lambda frame: on_confirm(ch, frame), callback=lambda _f: pump(ch)))

    def on_confirm(ch: object, frame: object) -> None:
        method = frame.method  # type: ignore[attr-defined]
        state["confirmed"] = method.delivery_tag if method.multiple else state["confirmed"] + 1
        pump(ch)

    def pump(ch: object) -> None:
        props = pika.BasicProperties(delivery_mode=2)
        while not state["stop"] and state["sent"] - state["confirmed"] < WINDOW:
            ch.basic_publish("", RAW_QUEUE, body, props)  # type: ignore[attr-defined]
            state["sent"] += 1

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    publisher = pika.SelectConnection(params, on_open_callback=on_open,
                                      on_close_callback=lambda conn, _reason: conn.ioloop.stop())
    start = time.perf_counter()
    publisher.ioloop.call_later(seconds, lambda: state.update(stop=True))
    publisher.ioloop.call_later(seconds + 0.5, publisher.close)
    publisher.ioloop.start()
    while consumed[0] < state["confirmed"] and time.perf_counter() - start < seconds + 30:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    done.set()
    consumer.join(timeout=10)
    return consumed[0] / elapsed


def adapter_rate(url: str, size_kb: int, seconds: float, *, quorum: bool) -> float:
    """The adapter's rate on a fresh queue of the given type (deleted afterwards)."""
    agency = AgencyCode(f"999.{secrets.randbelow(90) + 10}.98.H99")
    try:
        with AmqpTransport(url, quorum=quorum) as amqp:
            return transport_bench.run(amqp, size_kb=size_kb, seconds=seconds, agency=agency).rate
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        channel = conn.channel()
        for name in (queue_name(agency), dead_queue_name(agency)):
            channel.queue_delete(name)
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--size-kb", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    raw, adapter, classic, embedded = [], [], [], []
    for _ in range(args.rounds):
        raw.append(raw_pika(args.broker, args.size_kb, args.seconds))
        adapter.append(adapter_rate(args.broker, args.size_kb, args.seconds, quorum=True))
        classic.append(adapter_rate(args.broker, args.size_kb, args.seconds, quorum=False))
        with tempfile.TemporaryDirectory() as tmp, EmbeddedTransport(Path(tmp) / "bench.db") as local:
            embedded.append(transport_bench.run(local, size_kb=args.size_kb, seconds=args.seconds).rate)
    r, a, e = statistics.median(raw), statistics.median(adapter), statistics.median(embedded)
    c = statistics.median(classic)
    print(f"{args.size_kb} KiB persistent confirmed messages, medians of {args.rounds} rounds of {args.seconds}s")
    print(f"  raw pika (async confirms)  {r:9,.0f} msg/s")
    print(f"  RabbitMQ adapter, quorum   {a:9,.0f} msg/s   {a / r:5.0%} of raw pika on quorum (aim >= 80%)")
    print(f"  RabbitMQ adapter, classic  {c:9,.0f} msg/s   quorum/classic {a / c:4.2f}x")
    print(f"  embedded (SQLite)          {e:9,.0f} msg/s   (aim > 5,000)")


if __name__ == "__main__":
    main()
