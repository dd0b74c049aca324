"""``exchange audit``: what auditors run, offline, with public keys and certificates only.

Exit codes: 0 the log holds, 1 it does not (with what and where), 2 usage. Every command takes
``--config NODE_TOML`` in place of the database (or bundle) and key, to point at a node's own
files; for ``reconcile`` it names this node, and the other side stays a bundle or database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from exchange import clock
from exchange.audit import bundle, proofs
from exchange.audit import verify as verifying
from exchange.audit.checkpoints import Checkpoint, origin_for, parse, rotate_key
from exchange.audit.log import AuditLog
from exchange.audit.reconcile import reconcile
from exchange.audit.show import show
from exchange.audit.sources import BundleSource, LogSource, Trust, checkpoint_of, open_source
from exchange.envelope import pki
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig
from exchange.store.node import Store

ICT = dt.timezone(dt.timedelta(hours=7))
MAX_AGE = dt.timedelta(days=1)
"""How long entries may wait for a checkpoint (a node makes one every minute) before verify fails."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> dt.timedelta:
    """A span given as a number with a unit (s, m, h, d); a bare number is seconds."""
    value, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(value) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90m, 12h, 2d)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} is negative")
    return dt.timedelta(seconds=seconds)


def register(commands: Any) -> None:
    group = commands.add_parser("audit", help="verify, export, prove and reconcile audit logs")
    sub = group.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = sub.add_parser("verify", help="recompute the tree, check every checkpoint and hash")
    _source_args(verify, trust=True)
    verify.add_argument("--peer", type=Path, action="extend", nargs="+", default=[], metavar="BUNDLE|DB",
                        help="a peer's bundle or database: the checkpoints of this log it holds vouch for "
                             "the entries they cover, and any it holds that the entries do not reproduce is a fork")
    verify.add_argument("--max-age", type=duration, default=MAX_AGE, metavar="AGE",
                        help="fail when entries have waited longer than this for a checkpoint "
                             "(e.g. 90m, 12h, 2d; default 1d), judged at the bundle's export or now")
    verify.set_defaults(handler=_verify)

    export = sub.add_parser("export", help="write a self-contained bundle")
    _source_args(export)
    export.add_argument("--out", type=Path, required=True, metavar="BUNDLE")
    export.set_defaults(handler=_export)

    prove = sub.add_parser("prove", help="a dossier's entries with inclusion proofs, as JSON")
    _source_args(prove)
    prove.add_argument("--dossier", required=True, metavar="CODE")
    prove.add_argument("--checkpoint", metavar="SIZE|FILE",
                       help="prove against this checkpoint (one of the log's sizes, or a note file), "
                            "not the latest")
    prove.set_defaults(handler=_prove)

    consistency = sub.add_parser("consistency", help="are two checkpoints of one log consistent? prints the proof")
    consistency.add_argument("old", metavar="OLD", help="the older checkpoint: a note file, or a size of the log's")
    consistency.add_argument("new", metavar="NEW", help="the newer checkpoint: a note file, or a size of the log's")
    log = consistency.add_mutually_exclusive_group(required=True)
    log.add_argument("--bundle", type=Path, metavar="BUNDLE|DB", help="the log: a bundle or a node database")
    log.add_argument("--config", type=Path, metavar="NODE_TOML", help="use a node's database and key")
    consistency.add_argument("--json", action="store_true", help="print the proof as JSON, for an outside checker")
    _trust_args(consistency)
    consistency.set_defaults(handler=_consistency)

    reconcile_ = sub.add_parser("reconcile", help="match what A sent B with what B received and receipted")
    this = reconcile_.add_mutually_exclusive_group(required=True)
    this.add_argument("this", type=Path, nargs="?", metavar="A", help="one side: a bundle or a node database")
    this.add_argument("--config", type=Path, metavar="NODE_TOML", help="this node's database as one side")
    reconcile_.add_argument("other", type=Path, metavar="B", help="the other side: a bundle or a node database")
    reconcile_.set_defaults(handler=_reconcile)

    rotate = sub.add_parser("rotate-key", help="a new checkpoint key for a node, attested by its agency key; "
                            "reload the node (SIGHUP) to sign with it")
    rotate.add_argument("--config", type=Path, required=True, metavar="NODE_TOML")
    rotate.set_defaults(handler=_rotate_key)

    show_ = sub.add_parser("show", help="the processing-control view of a dossier")
    _source_args(show_)
    show_.add_argument("--dossier", metavar="CODE")
    show_.set_defaults(handler=_show)


def _source_args(parser: argparse.ArgumentParser, trust: bool = False) -> None:
    log = parser.add_mutually_exclusive_group(required=True)
    log.add_argument("db", type=Path, nargs="?", metavar="DB|BUNDLE", help="a node database or a bundle")
    log.add_argument("--config", type=Path, metavar="NODE_TOML", help="use a node's database and key")
    if trust:
        _trust_args(parser)


def _trust_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, metavar="PUB", help="the checkpoint verifier key file")
    parser.add_argument("--cert", type=Path, metavar="CERT",
                        help="the agency certificate that attested the checkpoint keys")


def _target(given: Path | None, config_file: Path | None) -> tuple[Path, NodeConfig | None]:
    """The log to read: the one given, or the database of the node ``--config`` names (the parser
    lets exactly one through)."""
    if config_file is not None:
        config = NodeConfig.load(config_file)
        return config.database, config
    if given is None:
        raise ConfigError("give a database (or bundle) or --config NODE_TOML")
    return given, None


def _trust(args: argparse.Namespace, config: NodeConfig | None) -> Trust:
    if args.key is not None:
        return Trust.from_key_file(args.key)
    if args.cert is not None:
        return Trust.from_cert_file(args.cert)
    if config is not None:
        return Trust.from_key_file(config.checkpoint_verifier)
    raise ConfigError("give --key PUB or --cert CERT (or --config): a log is verified against a key")


def _verify(args: argparse.Namespace) -> int:
    path, config = _target(args.db, args.config)
    source = open_source(path)
    peers = [_peer_copy(peer) for peer in args.peer]
    report = verifying.verify(source, _trust(args, config), progress=verifying.terminal_progress, peers=peers)
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 70 + "\r")
    for problem in report.problems:
        print(f"{path}: {problem}", file=sys.stderr)
    print(f"{path}: {report.entries} entries, {report.checkpoints} checkpoints, "
          f"{report.covered} entries covered by the latest good checkpoint; "
          f"first {report.first_time or '-'}, last {report.last_time or '-'}")
    for line in _coverage(report, len(peers)):
        print(line)
    if not report.holds:
        print(f"FAILS: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    reference = (source.exported_at if isinstance(source, BundleSource) else None) or clock.now()
    if report.stale(reference, args.max_age):
        print(_stale(report, reference, args.max_age), file=sys.stderr)
        return 1
    uncovered = report.uncovered
    tail = f" ({uncovered} newer entries not yet checkpointed)" if uncovered else ""
    print(f"holds: every entry, stored hash and checkpoint agrees{tail}")
    if report.own_only:
        print(f"note: {report.own_only} entries rest on this node's own checkpoints only; anyone with the node's "
              "files could have rewritten them" + ("" if peers else " (give --peer to hold them to what peers kept)"))
    return 0


def _peer_copy(path: Path) -> verifying.PeerCopy:
    source = open_source(path)
    name = source.origin.removeprefix(origin_for("")) or str(path)
    return verifying.PeerCopy(name, tuple(source.peer_checkpoint_notes()))


def _coverage(report: verifying.Report, peers: int) -> list[str]:
    """Three lines: what peers vouch for, what only the node does, what nobody does."""
    witnessed, covered = report.witnessed, max(report.covered, report.witnessed)
    by = f" (held by {', '.join(report.witnesses)})" if report.witnesses else ""
    return [
        f"  witnessed by peers:   {witnessed} entries{_span(0, witnessed)}{by}"
        + ("" if peers else ": no --peer given"),
        f"  own checkpoints only: {report.own_only} entries{_span(witnessed, covered)}",
        f"  not covered by any checkpoint: {report.uncovered} entries{_span(covered, report.entries)}",
    ]


def _span(start: int, end: int) -> str:
    return f" ({start}..{end - 1})" if end > start else ""


def _stale(report: verifying.Report, reference: dt.datetime, max_age: dt.timedelta) -> str:
    if not max(report.covered, report.witnessed):
        return (f"FAILS: none of the {report.entries} entries is covered by any checkpoint: nothing but the "
                "file itself vouches for this history")
    since = report.waiting_since.isoformat() if report.waiting_since else "?"
    return (f"FAILS: {report.uncovered} entries have waited for a checkpoint since {since}, longer than "
            f"{max_age} before {reference.isoformat()} (the node stopped checkpointing, or its checkpoints "
            "were removed)")


def _export(args: argparse.Namespace) -> int:
    source = open_source(_target(args.db, args.config)[0])
    count = bundle.export(source, args.out)
    print(f"{count} entries, {len(source.checkpoint_notes())} checkpoints, "
          f"{len(source.key_records())} keys -> {args.out}")
    return 0


def _prove(args: argparse.Namespace) -> int:
    source = open_source(_target(args.db, args.config)[0])
    checkpoint = None if args.checkpoint is None else _checkpoint(args.checkpoint, source)
    document = proofs.prove(source, args.dossier, checkpoint)
    if not document["entries"] and not document["not_yet_checkpointed"]:
        print(f"no entry about dossier {args.dossier}", file=sys.stderr)
        return 1
    print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0


def _checkpoint(spec: str, source: LogSource) -> Checkpoint:
    """A checkpoint named on the command line: a note file, or the size of one of the log's own."""
    if spec.isdigit() and not Path(spec).is_file():
        return checkpoint_of(source, int(spec))
    return parse(_read_note(Path(spec)))


def _read_note(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _consistency(args: argparse.Namespace) -> int:
    path, config = _target(args.bundle, args.config)
    source = open_source(path)
    trust = _trust(args, config) if args.key or args.cert or config else Trust()
    old, new = (_checkpoint(spec, source).note for spec in (args.old, args.new))
    result = proofs.consistency(old, new, source, trust)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    if not result.holds:
        return 1
    if args.json:
        print(json.dumps(result.document(), ensure_ascii=False, indent=2))
        return 0
    print(f"old    size {result.old.size:<10} root {result.old.root.hex()}")
    print(f"new    size {result.new.size:<10} root {result.new.root.hex()}")
    for number, value in enumerate(result.proof, 1):
        print(f"proof  {number:<15} {value.hex()}")
    print(f"consistent: {result.new.origin} size {result.old.size} is a prefix of size {result.new.size}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    this, _ = _target(args.this, args.config)
    matched, gaps = reconcile(open_source(this), open_source(args.other))
    for gap in gaps:
        print(gap)
    print(f"{matched} transfer(s) matched on both sides, {len(gaps)} without their other half")
    return 1 if gaps else 0


def _rotate_key(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    cert, key = pki.load_cert(config.cert), pki.load_key(config.key)
    if not pki.key_matches(cert, key):
        raise ConfigError(f"{config.key} is not the key of the certificate {config.cert}: install a matching pair")
    if pki.agency_of(cert) != config.agency:
        raise ConfigError(f"{config.cert} is not the certificate of {config.agency}")
    store = Store(config.database)
    try:
        verifier = rotate_key(AuditLog(store.conn, str(config.agency)), store.transaction, config.checkpoint_key, key,
                              cert.public_bytes(Encoding.PEM).decode("ascii"))
    finally:
        store.close()
    print(f"checkpoint key rotated: {verifier}\nattested by certificate serial {cert.serial_number:x}; "
          f"{config.checkpoint_verifier} keeps the old keys. Reload the node (SIGHUP) to sign with it")
    return 0


def _show(args: argparse.Namespace) -> int:
    path, _ = _target(args.db, args.config)
    for line in show(open_source(path), args.dossier, ICT):
        print(line)
    return 0
