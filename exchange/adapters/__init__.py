"""Every edge to the outside world: the transports (RabbitMQ, embedded SQLite) and the doors agency
systems use (drop folder, HTTP API, webhooks, edXML). Each translates its library's errors into
ours at its edge. The core knows only the ports (``exchange.node.transport``, ``exchange.node.doors``);
the command line builds the adapters and hands them to the node."""

from __future__ import annotations

from pathlib import Path

from exchange.node.config import NodeConfig
from exchange.node.transport import Transport


def open_transport(config: NodeConfig) -> Transport:
    """The node's transport, from its configuration alone: its broker, trusting the node's CA for
    ``amqps://``, or the embedded file the nodes of its host share."""
    return open_transport_url(config.broker, embedded_path=config.embedded_transport, ca_file=config.ca)


def open_transport_url(url: str, *, embedded_path: Path, ca_file: Path | None = None) -> Transport:
    """RabbitMQ when a broker URL is given, else the embedded SQLite transport at ``embedded_path``:
    the one place that chooses the adapter. ``ca_file`` is used only by ``amqps://`` URLs."""
    if url:
        from exchange.adapters.amqp import AmqpTransport

        return AmqpTransport(url, ca_file=ca_file)
    from exchange.adapters.embedded import EmbeddedTransport

    return EmbeddedTransport(embedded_path)
