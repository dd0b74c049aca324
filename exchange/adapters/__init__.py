"""Every edge to the outside world: transports (RabbitMQ, embedded SQLite) and, later, the doors
agency systems use. The core imports only the ports (``exchange.transport``)."""

from __future__ import annotations

from pathlib import Path

from exchange.node.transport import Transport


def open_transport(broker: str, *, embedded_path: Path, ca_file: str | None = None) -> Transport:
    """RabbitMQ when a broker URL is configured, else the embedded SQLite transport."""
    if broker:
        from exchange.adapters.amqp import AmqpTransport

        return AmqpTransport(broker, ca_file=ca_file)
    from exchange.adapters.embedded import EmbeddedTransport

    return EmbeddedTransport(embedded_path)
