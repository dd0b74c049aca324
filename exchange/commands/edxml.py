"""``exchange edxml``: import an edXML package (a dossier, or a status from the platform), export
transfers and statuses as edXML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exchange.adapters import edxml
from exchange.commands import agency_arg, procedure_arg, read_input
from exchange.files import write_atomic
from exchange.node import platform
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext


def register(commands: Any) -> None:
    group = commands.add_parser("edxml", help="edXML (QCVN 102:2016) packages in and out")
    sub = group.add_subparsers(dest="edxml_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="submit a package as a dossier, or record a status package")
    imp.add_argument("--config", type=Path, required=True, metavar="FILE")
    imp.add_argument("--procedure", type=procedure_arg, metavar="CODE",
                     help=f"the procedure of a package that carries no dossier.xml (else {platform.MAPPING_FILE} "
                          "beside the rules)")
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
    source = str(args.package)
    package = edxml.read(read_input(args.package), source)
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        if isinstance(package, edxml.StatusPackage):
            code, what = platform.take_status(ctx, package, source)
            print(f"{code}: {what}")
            return 0
        print(platform.submit_package(ctx, package, source, args.procedure))
    return 0


def _export(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        data = platform.export_stored(ctx, args.dossier, args.to)
    write_atomic(args.out, data)
    print(f"{args.dossier} -> {args.out} ({len(data)} bytes, edXML)")
    return 0


def _status(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        code, data = platform.export_stored_status(ctx, args.dossier)
    write_atomic(args.out, data)
    print(f"{args.dossier}: status {code} -> {args.out}")
    return 0
