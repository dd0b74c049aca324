"""``exchange audit``: what auditors run, offline, with public keys and certificates only.

Exit codes: 0 the log holds, 1 it does not (with what and where), 2 usage. Every command takes
``--config NODE_TOML`` in place of the database and key, to point at a node's own files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from exchange.audit import checkpoints
from exchange.audit import tools as audit_tools
from exchange.audit.tools import BundleSource, DatabaseSource, Trust
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig

ICT = dt.timezone(dt.timedelta(hours=7))


def register(commands: Any) -> None:
    group = commands.add_parser("audit", help="verify, export, prove and reconcile audit logs")
    sub = group.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = sub.add_parser("verify", help="recompute the tree, check every checkpoint and hash")
    _source_args(verify, trust=True)
    verify.set_defaults(handler=_verify)

    export = sub.add_parser("export", help="write a self-contained bundle")
    _source_args(export)
    export.add_argument("--out", type=Path, required=True, metavar="BUNDLE")
    export.set_defaults(handler=_export)

    prove = sub.add_parser("prove", help="a dossier's entries with inclusion proofs, as JSON")
    _source_args(prove)
    prove.add_argument("--dossier", required=True, metavar="CODE")
    prove.set_defaults(handler=_prove)

    consistency = sub.add_parser("consistency", help="are two checkpoints of one log consistent?")
    consistency.add_argument("old", type=Path, metavar="OLD_CHECKPOINT")
    consistency.add_argument("new", type=Path, metavar="NEW_CHECKPOINT")
    consistency.add_argument("--bundle", type=Path, required=True, metavar="BUNDLE")
    _trust_args(consistency)
    consistency.set_defaults(handler=_consistency)

    reconcile = sub.add_parser("reconcile", help="match what A sent B with what B received and receipted")
    reconcile.add_argument("a", type=Path, metavar="BUNDLE_A")
    reconcile.add_argument("b", type=Path, metavar="BUNDLE_B")
    reconcile.set_defaults(handler=_reconcile)

    show = sub.add_parser("show", help="the processing-control view of a dossier")
    _source_args(show)
    show.add_argument("--dossier", metavar="CODE")
    show.set_defaults(handler=_show)


def _source_args(parser: argparse.ArgumentParser, trust: bool = False) -> None:
    parser.add_argument("db", type=Path, nargs="?", metavar="DB",
                        help="a node database (or, for verify and show, a bundle)")
    parser.add_argument("--config", type=Path, metavar="NODE_TOML", help="use a node's database and key")
    if trust:
        _trust_args(parser)


def _trust_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, metavar="PUB", help="the checkpoint verifier key file")
    parser.add_argument("--cert", type=Path, metavar="CERT",
                        help="the agency certificate that attested the checkpoint keys")


def _target(args: argparse.Namespace) -> tuple[Path, NodeConfig | None]:
    if (args.db is None) == (args.config is None):
        raise ConfigError("give a database (or bundle) or --config NODE_TOML, not both or neither")
    if args.config is not None:
        config = NodeConfig.load(args.config)
        return config.database, config
    return args.db, None


def _trust(args: argparse.Namespace, config: NodeConfig | None) -> Trust:
    if args.key is not None:
        return Trust.from_key_file(args.key)
    if args.cert is not None:
        return Trust.from_cert_file(args.cert)
    if config is not None:
        return Trust.from_key_file(config.checkpoint_verifier)
    raise ConfigError("give --key PUB or --cert CERT (or --config): a log is verified against a key")


def _verify(args: argparse.Namespace) -> int:
    path, config = _target(args)
    source = audit_tools.open_source(path)
    report = audit_tools.verify(source, _trust(args, config), progress=audit_tools.terminal_progress)
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 70 + "\r")
    for problem in report.problems:
        print(f"{path}: {problem}", file=sys.stderr)
    print(f"{path}: {report.entries} entries, {report.checkpoints} checkpoints, "
          f"{report.covered} entries covered by the latest good checkpoint; "
          f"first {report.first_time or '-'}, last {report.last_time or '-'}")
    if report.holds:
        uncovered = report.entries - report.covered
        tail = f" ({uncovered} newer entries not yet checkpointed)" if uncovered else ""
        print(f"holds: every entry, stored hash and checkpoint agrees{tail}")
        return 0
    print(f"FAILS: {len(report.problems)} problem(s)", file=sys.stderr)
    return 1


def _export(args: argparse.Namespace) -> int:
    path, _ = _target(args)
    source = DatabaseSource(path)
    count = audit_tools.export(source, args.out)
    print(f"{count} entries, {len(source.checkpoint_notes())} checkpoints, "
          f"{len(source.key_records())} keys -> {args.out}")
    return 0


def _prove(args: argparse.Namespace) -> int:
    path, _ = _target(args)
    document = audit_tools.prove(DatabaseSource(path), args.dossier)
    if not document["entries"] and not document["not_yet_checkpointed"]:
        print(f"no entry about dossier {args.dossier}", file=sys.stderr)
        return 1
    print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0


def _consistency(args: argparse.Namespace) -> int:
    trust = Trust()
    if args.key is not None or args.cert is not None:
        trust = _trust(args, None)
    old, new = (_read_note(p) for p in (args.old, args.new))
    problems = audit_tools.consistency(old, new, BundleSource(args.bundle), trust)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    a, b = checkpoints.parse(old), checkpoints.parse(new)
    print(f"consistent: {a.origin} size {a.size} is a prefix of size {b.size}")
    return 0


def _read_note(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _reconcile(args: argparse.Namespace) -> int:
    matched, gaps = audit_tools.reconcile(BundleSource(args.a), BundleSource(args.b))
    for gap in gaps:
        print(gap)
    print(f"{matched} transfer(s) matched on both sides, {len(gaps)} without their other half")
    return 1 if gaps else 0


def _show(args: argparse.Namespace) -> int:
    path, _ = _target(args)
    for line in audit_tools.show(audit_tools.open_source(path), args.dossier, ICT):
        print(line)
    return 0
