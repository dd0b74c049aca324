"""``exchange demo``: the whole product on one machine, in under two minutes."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from exchange import logs
from exchange.commands import positive_int
from exchange.demo import district as demo


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="run a district's nodes and a mix of dossiers, then report")
    parser.add_argument("--out", type=Path, default=Path("exchange-demo"), metavar="DIR",
                        help="where the CA, the nodes and report.html go (a folder it made before is "
                             "replaced; any other non-empty folder is refused)")
    parser.add_argument("--broker", default="", metavar="URL", help="amqp://... (default: embedded transport)")
    parser.add_argument("--dossiers", type=positive_int, default=24, metavar="N")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress a line at a time, even into a pipe
    logs.configure("console")
    return demo.run(args.out, args.broker, args.dossiers)
