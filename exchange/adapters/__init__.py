"""Every edge to the outside world: the transports (RabbitMQ, embedded SQLite) and the doors agency
systems use (drop folder, HTTP API, webhooks, edXML). Each translates its library's errors into
ours at its edge. The core knows only the ports (``exchange.node.transport``, ``exchange.node.doors``);
the command line builds the adapters and hands them to the node."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from exchange.node.config import NodeConfig
from exchange.node.transport import Transport


def open_transport(config: NodeConfig) -> Transport:
    """The node's transport, from its configuration alone: its brokers, or the embedded file the
    nodes of its host share."""
    return open_transport_url(config.brokers, embedded_path=config.embedded_transport, config=config)


def open_transport_url(url: str | Sequence[str], *, embedded_path: Path, config: NodeConfig | None = None) -> Transport:
    """RabbitMQ when a broker URL (or several, a cluster's, tried in order) is given, else the
    embedded SQLite transport at ``embedded_path``: the one place that chooses the adapter. A
    node's ``config`` gives the queue type and, for ``amqps://`` URLs, the TLS settings: the
    broker's CA (``[transport] broker_ca``, default ``[pki] ca``), the client certificate
    (``broker_cert``/``broker_key``, default the node's own) and ``broker_auth``."""
    urls = tuple(u for u in ((url,) if isinstance(url, str) else url) if u)
    if urls:
        from exchange.adapters.amqp import AmqpTransport

        quorum = config is None or config.queue_type == "quorum"
        if config is None or not any(u.startswith("amqps://") for u in urls):
            return AmqpTransport(urls, external=config is not None and config.broker_external, quorum=quorum)
        return AmqpTransport(urls, ca_file=config.broker_ca_file, cert_file=config.broker_cert_file,
                             key_file=config.broker_key_file, external=config.broker_external, quorum=quorum)
    from exchange.adapters.embedded import EmbeddedTransport

    return EmbeddedTransport(embedded_path)
