"""``exchange edxml``: import an edXML package as a dossier, export transfers and statuses as edXML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lxml import etree

from exchange.adapters.edxml import export_stored, export_stored_status, import_package
from exchange.commands import agency_arg, read_input
from exchange.files import write_atomic
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import submit


def register(commands: Any) -> None:
    group = commands.add_parser("edxml", help="edXML (QCVN 102:2016) packages in and out")
    sub = group.add_subparsers(dest="edxml_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="submit the dossier an edXML package carries")
    imp.add_argument("--config", type=Path, required=True, metavar="FILE")
    imp.add_argument("package", type=Path, metavar="PACKAGE")
    imp.set_defaults(handler=_import)
    exp = sub.add_parser("export", help="a dossier at this node as an edXML package")
    exp.add_argument("--config", type=Path, required=True, metavar="FILE")
    exp.add_argument("--dossier", required=True, metavar="CODE")
    exp.add_argument("--to", type=agency_arg, required=True, metavar="AGENCY")
    exp.add_argument("--out", type=Path, required=True, metavar="FILE")
    exp.set_defaults(handler=_export)
    status = sub.add_parser("status", help="a dossier's status as an edXML status package")
    status.add_argument("--config", type=Path, required=True, metavar="FILE")
    status.add_argument("--dossier", required=True, metavar="CODE")
    status.add_argument("--out", type=Path, required=True, metavar="FILE")
    status.set_defaults(handler=_status)


def _import(args: argparse.Namespace) -> int:
    root, _ = import_package(read_input(args.package), str(args.package))
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        code = submit(ctx, etree.tostring(root, encoding="UTF-8"), str(args.package))
    print(code)
    return 0


def _export(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        data = export_stored(ctx, args.dossier, args.to)
    write_atomic(args.out, data)
    print(f"{args.dossier} -> {args.out} ({len(data)} bytes, edXML)")
    return 0


def _status(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        code, data = export_stored_status(ctx, args.dossier)
    write_atomic(args.out, data)
    print(f"{args.dossier}: status {code} -> {args.out}")
    return 0
