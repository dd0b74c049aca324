"""``exchange transport bench``: throughput of the configured transport."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from exchange.adapters import open_transport_url
from exchange.bench import transport as transport_bench
from exchange.commands import positive_int
from exchange.node.config import NodeConfig


def register(commands: Any) -> None:
    group = commands.add_parser("transport", help="the message transport")
    sub = group.add_subparsers(dest="transport_command", metavar="ACTION", required=True)
    bench = sub.add_parser("bench", help="publish+consume throughput, to size a deployment")
    bench.add_argument("--broker", metavar="URL", help="amqp://... (default: the embedded transport)")
    bench.add_argument("--config", type=Path, metavar="NODE_TOML", help="use a node's transport settings")
    bench.add_argument("--size-kb", type=positive_int, default=10, metavar="N")
    bench.add_argument("--seconds", type=float, default=5.0, metavar="S")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    broker = args.broker or ""
    config: NodeConfig | None = None
    with tempfile.TemporaryDirectory() as tmp:
        embedded = Path(tmp) / "bench-transport.db"
        if args.config is not None and not broker:
            config = NodeConfig.load(args.config)
            broker = config.broker
            embedded = config.state_dir / "bench-transport.db"  # beside the node's, not the node's own
        with open_transport_url(broker, embedded_path=embedded, config=config) as transport:
            result = transport_bench.run(transport, size_kb=max(1, args.size_kb), seconds=args.seconds)
    kind = f"RabbitMQ at {broker.split('@')[-1]}" if broker else "embedded (SQLite)"
    print(f"{kind}: {result.messages} messages of {args.size_kb} KiB in {result.seconds:.1f}s: "
          f"{result.rate:,.0f} messages/s, {result.mib_per_second:.1f} MiB/s "
          "(persistent, confirmed, consumed, acked)")
    return 0
