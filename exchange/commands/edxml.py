"""``exchange edxml``: import an edXML package as a dossier, export transfers and statuses as edXML."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from lxml import etree

from exchange.adapters.edxml import Organ, export_status, export_transfer, import_package
from exchange.codes import ProcedureCode
from exchange.commands import agency_arg, read_input
from exchange.errors import InvalidInput
from exchange.files import write_atomic
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import submit
from exchange.xml import safexml

STATE_TO_STATUS = {"completed": "06", "refused": "02", "processing": "05"}


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
    ctx = NodeContext.open(NodeConfig.load(args.config))
    try:
        code = submit(ctx, etree.tostring(root, encoding="UTF-8"), str(args.package))
    finally:
        ctx.close()
    print(code)
    return 0


def _organ(ctx: NodeContext, code: str) -> Organ:
    agency = ctx.rules.agencies.get(code)  # type: ignore[call-overload]
    return Organ(code, agency.name if agency else code)


def _export(args: argparse.Namespace) -> int:
    ctx = NodeContext.open(NodeConfig.load(args.config))
    try:
        row = ctx.store.conn.execute("SELECT payload, procedure FROM dossiers WHERE code = ?",
                                     (args.dossier,)).fetchone()
        if row is None:
            raise InvalidInput(f"this node knows no dossier {args.dossier}")
        dossier = safexml.parse(bytes(row[0]), source=f"dossier {args.dossier}")
        subject = ctx.rules.procedure(ProcedureCode(row[1])).name
        data = export_transfer(dossier, _organ(ctx, str(ctx.agency)), _organ(ctx, str(args.to)), subject)
    finally:
        ctx.close()
    write_atomic(args.out, data)
    print(f"{args.dossier} -> {args.out} ({len(data)} bytes, edXML)")
    return 0


def _status(args: argparse.Namespace) -> int:
    ctx = NodeContext.open(NodeConfig.load(args.config))
    try:
        conn = ctx.store.conn
        last = conn.execute("SELECT exchange_status, note FROM statuses WHERE dossier = ? ORDER BY rowid DESC "
                            "LIMIT 1", (args.dossier,)).fetchone()
        state = conn.execute("SELECT state FROM dossiers WHERE code = ?", (args.dossier,)).fetchone()
        if state is None:
            raise InvalidInput(f"this node knows no dossier {args.dossier}")
        code, note = (last[0], last[1] or "") if last and state[0] == "processing" else (
            STATE_TO_STATUS.get(state[0], "05"), f"dossier {state[0]}")
        data = export_status(args.dossier, _organ(ctx, str(ctx.agency)), code, note, dt.datetime.now(dt.UTC))
    finally:
        ctx.close()
    write_atomic(args.out, data)
    print(f"{args.dossier}: status {code} -> {args.out}")
    return 0
