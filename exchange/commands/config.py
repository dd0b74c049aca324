"""``exchange config``: the province's signed configuration bundle, from its authority to each node."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from exchange import clock
from exchange.bundle import authority, model
from exchange.commands import agency_arg, positive_int, read_input
from exchange.files import write_atomic
from exchange.node import configuration
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext

DEFAULT_VALID_DAYS = 30


def register(commands: Any) -> None:
    group = commands.add_parser("config", help="the province's signed configuration bundle")
    sub = group.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    init = sub.add_parser("init-authority", help="the configuration authority's key and certificate, from the CA")
    init.add_argument("--ca", type=Path, required=True, metavar="CA_DIR")
    init.add_argument("--out", type=Path, required=True, metavar="DIR")
    init.add_argument("--force", action="store_true", help="replace an existing authority key")
    init.set_defaults(handler=_init)

    publish = sub.add_parser("publish", help="sign a bundle of rules, CA certificates and CRL")
    publish.add_argument("--authority", type=Path, required=True, metavar="DIR")
    publish.add_argument("--rules", type=Path, required=True, metavar="RULES_DIR")
    publish.add_argument("--ca", type=Path, required=True, metavar="CA_PEM")
    publish.add_argument("--crl", type=Path, metavar="CRL")
    publish.add_argument("--certs", type=Path, metavar="PEM_OR_DIR",
                         help="the agencies' certificates (a PEM file, or a folder of *.pem): nodes encrypt each "
                              "agency's dossiers to its certificate")
    publish.add_argument("--version", type=positive_int, required=True, metavar="N")
    publish.add_argument("--effective", type=_moment, metavar="ISO8601", help="when nodes apply it (default: now)")
    publish.add_argument("--valid-days", type=positive_int, default=DEFAULT_VALID_DAYS, metavar="D",
                         help=f"how long after it takes effect it stays valid (default {DEFAULT_VALID_DAYS})")
    publish.add_argument("--out", type=Path, required=True, metavar="FILE")
    publish.set_defaults(handler=_publish)

    install = sub.add_parser("install", help="a node takes a bundle from a file")
    install.add_argument("--config", type=Path, required=True, metavar="NODE_TOML")
    install.add_argument("file", type=Path, metavar="FILE")
    install.set_defaults(handler=_install)

    broadcast = sub.add_parser("broadcast", help="the authority's node sends a bundle to every agency, "
                               "through the exchange")
    broadcast.add_argument("--config", type=Path, required=True, metavar="NODE_TOML")
    broadcast.add_argument("--to", type=agency_arg, action="append", metavar="AGENCY",
                           help="only this agency (repeat it); default: every agency in force in the directory")
    broadcast.add_argument("file", type=Path, metavar="FILE")
    broadcast.set_defaults(handler=_broadcast)

    crl = sub.add_parser("crl", help="a CRL-only update between bundles (signed by the CA): in force within seconds")
    crl.add_argument("--config", type=Path, required=True, metavar="NODE_TOML")
    crl.add_argument("file", type=Path, metavar="CRL")
    crl.set_defaults(handler=_crl)

    status = sub.add_parser("status", help="the bundles a node keeps, and the one in force")
    status.add_argument("--config", type=Path, required=True, metavar="NODE_TOML")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)


def _moment(text: str) -> dt.datetime:
    try:
        return clock.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time with its offset, such as "
                                         f"2026-12-01T00:00+07:00, got {text!r}") from None


def _init(args: argparse.Namespace) -> int:
    path = authority.init_authority(args.ca, args.out, force=args.force)
    print(f"configuration authority in {args.out}: {path.name} (give it to every node as its anchor), "
          f"{authority.KEY} (0600, keep it offline)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    signer = authority.Authority.load(args.authority)
    effective = args.effective or clock.now()
    expires = effective + dt.timedelta(days=args.valid_days)
    document = model.build(args.rules, read_input(args.ca), read_input(args.crl) if args.crl else None,
                           args.version, effective, expires, _certificates(args.certs) if args.certs else None)
    data = model.sign(document, signer.key, signer.cert)
    write_atomic(args.out, data)
    print(f"bundle version {args.version} -> {args.out} ({len(data)} bytes): effective {clock.utc(effective)}, "
          f"expires {clock.utc(expires)}")
    return 0


def _certificates(path: Path) -> bytes:
    if path.is_dir():
        return b"".join(p.read_bytes() for p in sorted(path.glob("*.pem")))
    return read_input(path)


def _install(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        kept = configuration.install(ctx, read_input(args.file), str(args.file))
    state = "in force" if kept.active else f"kept; applied at {clock.utc(kept.effective)}"
    print(f"bundle version {kept.version} installed ({state}), expires {clock.utc(kept.expires)}")
    return 0


def _broadcast(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        sent = configuration.broadcast(ctx, read_input(args.file), str(args.file), args.to)
    print(f"bundle {args.file} sealed to {len(sent)} agencies; the running node publishes it and records each receipt")
    return 0


def _crl(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        crl = configuration.install_crl(ctx, read_input(args.file), str(args.file))
    print(f"CRL of {crl.issuer.rfc4514_string()} with {len(list(crl))} revocation(s) in force; the running node "
          "reloads it within seconds")
    return 0


def _status(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    kept = [k.document() for k in configuration.installed(config)]
    if args.json:
        print(json.dumps(kept, indent=2))
        return 0
    if not kept:
        print(f"no bundle installed: the node runs the rules in {config.rules} and the CA in {config.ca}")
        return 0
    for item in kept:
        mark = "in force" if item["active"] else "kept"
        warn = "  EXPIRING" if item["expiring"] else ""
        print(f"version {item['version']}  {mark:8}  effective {item['effective']}  expires {item['expires']} "
              f"({item['days_left']} days left){warn}  sha256:{str(item['sha256'])[:16]}…  from {item['source']}")
    return 0
