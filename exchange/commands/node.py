"""The node's commands: ``node init``, ``run``, ``submit``, ``done``, ``supplement``, ``withdraw``,
``status``, ``dead``, ``check``."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from lxml import etree

from exchange import logs
from exchange.adapters import open_transport
from exchange.adapters.dropfolder import DropFolder
from exchange.adapters.http_api import ApiServer
from exchange.adapters.webhooks import Webhooks
from exchange.codes import DossierCode
from exchange.commands import agency_arg, read_input
from exchange.envelope import pki
from exchange.envelope.dossier import Supplement, media_type
from exchange.errors import ConfigError, ExchangeError, InvalidCode, UnknownDossier
from exchange.node import configuration, health, slips
from exchange.node.config import NodeConfig, split_password
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.dead_letters import DeadLetters, describe, replay
from exchange.node.doors import Door
from exchange.node.provisioning import (
    CONFIG_ROOT,
    STATE_ROOT,
    Account,
    Credentials,
    Placement,
    hand_over,
    init_node,
    init_node_from_files,
    prepare_system,
)
from exchange.node.status import local, view
from exchange.node.transport import DeadLetter
from exchange.node.workflow import DECISIONS, complete, submit, supplement, withdraw
from exchange.rules.load import load as load_rules
from exchange.store.cipher import ColumnCipher
from exchange.store.node import OutboxRow
from exchange.store.states import Result


def register(commands: Any) -> None:
    node = commands.add_parser("node", help="set up a node")
    sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="a node directory ready for `exchange run --config DIR/node.toml`")
    init.add_argument("--agency", type=agency_arg, required=True, metavar="CODE")
    ca = init.add_mutually_exclusive_group(required=True)
    ca.add_argument("--ca", type=Path, metavar="CA_DIR", help="the CA's folder, with its key: issues the node's "
                    "key and certificate")
    ca.add_argument("--ca-cert", type=Path, metavar="CA_PEM", help="the CA's certificate only, with --cert and "
                    "--key already issued (`exchange pki request`, `pki issue --csr`)")
    init.add_argument("--cert", type=Path, metavar="CERT", help="with --ca-cert: the agency's certificate")
    init.add_argument("--key", type=Path, metavar="KEY", help="with --ca-cert: the agency's key (copied 0600)")
    init.add_argument("--crl", type=Path, metavar="CRL", help="with --ca-cert: the CA's current CRL (without it, "
                      "revocation is not checked until one is installed)")
    init.add_argument("--rules", type=Path, metavar="DIR", help="the routing rules (required, except with --system "
                      "once /etc/exchange/rules holds them: --system copies them there the first time)")
    init.add_argument("--broker", default="", metavar="URL",
                      help="amqps://user@host/vhost; the password goes to a 0600 file, never to node.toml")
    init.add_argument("--broker-password-file", type=Path, metavar="FILE",
                      help="the broker's password (first line); or set EXCHANGE_BROKER_PASSWORD when the node runs")
    init.add_argument("--metrics-port", type=int, default=0, metavar="PORT")
    init.add_argument("--anchor", type=Path, metavar="CERT",
                      help="the configuration authority's certificate: bundles must be signed with it")
    where = init.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR", help="a node directory of one's own (state inside it)")
    where.add_argument("--system", action="store_true", help="the systemd unit's layout: /etc/exchange/CODE "
                       "(root:exchange), /var/lib/exchange/CODE (the exchange user's); run as root, after "
                       "systemd-sysusers")
    init.add_argument("--root", type=Path, default=Path("/"), metavar="DIR", help="with --system: install into "
                      "DIR as if it were / (its etc/passwd names the service user; node.toml names the paths "
                      "they have once DIR is /)")
    init.set_defaults(handler=_init)
    _register_storage_key(sub)

    run = commands.add_parser("run", help="run the node daemon")
    _config(run)
    run.set_defaults(handler=_run)

    sub_ = commands.add_parser("submit", help="submit a dossier received at this node's desk")
    _config(sub_)
    sub_.add_argument("dossier", type=Path, metavar="DOSSIER")
    sub_.set_defaults(handler=_submit)

    done = commands.add_parser("done", help="the local agency finished a step of a dossier")
    _config(done)
    done.add_argument("--dossier", required=True, metavar="CODE")
    done.add_argument("--step", required=True, metavar="STEP")
    done.add_argument("--result", choices=[r.value for r in DECISIONS], default=Result.ACCEPTED.value)
    done.add_argument("--reason", metavar="TEXT", help="why the step refused the dossier, or what documents "
                      "it needs (required with --result refused or supplement): it travels signed to the desk")
    done.add_argument("--late-reason", metavar="TEXT", help="if the step is late: why, on the apology slip "
                      "(phiếu xin lỗi) to the applicant")
    done.add_argument("--new-date", metavar="YYYY-MM-DD", help="if the step is late: the new date for the "
                      "result (default: the next working day)")
    done.set_defaults(handler=_done)

    more = commands.add_parser("supplement", help="the applicant brought the documents a step asked for")
    _config(more)
    more.add_argument("--dossier", required=True, metavar="CODE")
    more.add_argument("--title", action="append", default=[], metavar="TEXT",
                      help="the document's title, once per FILE in order (default: the file's name)")
    more.add_argument("files", nargs="+", type=Path, metavar="FILE")
    more.set_defaults(handler=_supplement)

    withdraw_ = commands.add_parser("withdraw", help="the applicant withdrew a dossier at this node's desk")
    _config(withdraw_)
    withdraw_.add_argument("--dossier", required=True, metavar="CODE")
    withdraw_.add_argument("--reason", required=True, metavar="TEXT")
    withdraw_.set_defaults(handler=_withdraw)

    status = commands.add_parser("status", help="where each dossier is")
    _config(status)
    status.add_argument("--dossier", metavar="CODE")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    dead = commands.add_parser("dead", help="inspect and replay dead letters")
    dead.add_argument("action", choices=("list", "show", "replay"))
    _config(dead)
    dead.add_argument("--id", metavar="ID", help="the dead letter (from `dead list`)")
    dead.add_argument("--operator", default=getpass.getuser(), help="who replays, for the audit log")
    shown = dead.add_mutually_exclusive_group()
    shown.add_argument("--envelope", action="store_true",
                       help="show: write the envelope's bytes as they are (an encrypted payload stays encrypted)")
    shown.add_argument("--decrypt", action="store_true",
                       help="show: verify an incoming dead letter and write its payload, decrypted with this "
                            "node's key (personal data: redirect it to a private file)")
    dead.set_defaults(handler=_dead)

    check = commands.add_parser("check", help="health check for a service manager (exit 0 healthy)")
    _config(check)
    check.add_argument("--down-after", type=float, default=health.DOWN_AFTER_S, metavar="SECONDS",
                       help="unhealthy once the node's transport has been down this long")
    check.add_argument("--stale-after", type=float, default=health.STALE_AFTER_S, metavar="SECONDS",
                       help="unhealthy once the node's heartbeat is this old (the loop is not running)")
    check.add_argument("--json", action="store_true", help="the verdict and the heartbeat as JSON, for machines")
    check.set_defaults(handler=_check)


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE")


def _dossier_code(text: str) -> DossierCode:
    try:
        return DossierCode(text.strip())
    except InvalidCode as exc:
        raise ConfigError(str(exc)) from None


def _init(args: argparse.Namespace) -> int:
    given = _credentials(args)
    anchor = None
    if args.anchor is not None:  # checked before anything is made
        anchor = configuration.check_anchor(args.anchor, given.ca_cert if given else args.ca / pki.CA_CERT)
    system = _system(args)
    rules_dir = system[2] if system else args.rules
    rules = load_rules(rules_dir)
    out: Path | Placement = system[0] if system else args.out
    if split_password(args.broker)[1] is not None:
        print("warning: a password on the command line is visible to other users of this host (ps); "
              "prefer --broker-password-file. It is kept out of node.toml all the same", file=sys.stderr)
    password = _first_line(args.broker_password_file) if args.broker_password_file else None
    if given is None:
        path = init_node(args.agency, pki.CertificateAuthority.load(args.ca), rules_dir, rules, args.broker,
                         out, args.metrics_port, broker_password=password)
    else:
        if given.crl is None:
            print("warning: no --crl: the node checks no revocation until the CA's CRL is installed as "
                  f"{_path_of(out) / 'crl.pem'} and named in node.toml", file=sys.stderr)
        path = init_node_from_files(args.agency, given, rules_dir, rules, args.broker, out,
                                    args.metrics_port, broker_password=password)
    if anchor is not None:
        configuration.set_anchor(path.parent, anchor)
    name = rules.agency(args.agency).name
    if system is None:
        print(f"node {args.agency} ({name}) ready: exchange run --config {path}")
        return 0
    hand_over(system[0], system[1])
    print(f"node {args.agency} ({name}) ready in {CONFIG_ROOT / str(args.agency)} and "
          f"{STATE_ROOT / str(args.agency)}: systemctl enable --now exchange@{args.agency}")
    return 0


def _path_of(out: Path | Placement) -> Path:
    return out.out if isinstance(out, Placement) else out


def _system(args: argparse.Namespace) -> tuple[Placement, Account, Path] | None:
    """With --system: the checked placement, service user and rules folder (``prepare_system``)."""
    if not args.system:
        if args.root != Path("/"):
            raise ConfigError("--root goes with --system")
        if args.rules is None:
            raise ConfigError("give --rules DIR: the routing rules the node runs on")
        return None
    return prepare_system(args.root, args.agency, args.rules)


def _credentials(args: argparse.Namespace) -> Credentials | None:
    """The files of ``--ca-cert``, or None with ``--ca`` (which takes none of them)."""
    files = {"--cert": args.cert, "--key": args.key, "--crl": args.crl}
    if args.ca is not None:
        given = [flag for flag, value in files.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} go with --ca-cert; --ca issues the node's own key and certificate")
        return None
    missing = [flag for flag in ("--cert", "--key") if files[flag] is None]
    if missing:
        raise ConfigError(f"--ca-cert needs {' and '.join(missing)}: the agency's certificate and key")
    return Credentials(args.ca_cert, args.cert, args.key, args.crl)


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    if not lines or not lines[0]:
        raise ConfigError(f"{path}: no password on its first line")
    return lines[0]


def _open(args: argparse.Namespace) -> NodeContext:
    return NodeContext.open(NodeConfig.load(args.config))


def _run(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    logs.configure(config.log_format)
    with NodeContext.open(config) as ctx, open_transport(config) as transport:
        return Daemon(ctx, transport, doors=_doors(ctx)).run()


def _doors(ctx: NodeContext) -> list[Door]:
    """The agency system's doors the configuration asks for (webhooks follow the configured URL)."""
    config = ctx.config
    doors: list[Door] = [DropFolder(config.dropfolder_dir), Webhooks()]
    if config.http_port:
        doors.append(ApiServer(ctx, config.http_host, config.http_port))
    return doors


def _submit(args: argparse.Namespace) -> int:
    with _open(args) as ctx:
        code = submit(ctx, read_input(args.dossier), str(args.dossier))
    print(code)
    return 0


def _done(args: argparse.Namespace) -> int:
    with _open(args) as ctx:
        late = slips.Late(args.late_reason, slips.parse_new_date(args.new_date, slips.today(ctx)))
        sent = complete(ctx, _dossier_code(args.dossier), args.step, args.result, args.reason, late=late)
        slips.publish(ctx)  # an apology slip, if the step was late
    print(f"{args.dossier} step {args.step} done ({args.result})" + (f": {', '.join(sent)}" if sent else ""))
    return 0


def _supplement(args: argparse.Namespace) -> int:
    if len(args.title) > len(args.files):
        raise ConfigError(f"{len(args.title)} --title for {len(args.files)} file(s): one title per FILE at most")
    titles = args.title + [None] * (len(args.files) - len(args.title))
    files = [Supplement(path.name, media_type(path.name), read_input(path), title)
             for path, title in zip(args.files, titles, strict=True)]
    with _open(args) as ctx:
        sent = supplement(ctx, _dossier_code(args.dossier), files)
    print(f"{args.dossier}: {len(files)} document(s) added; resumed " + ", ".join(sent))
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    with _open(args) as ctx:
        told = withdraw(ctx, _dossier_code(args.dossier), args.reason)
    print(f"{args.dossier} withdrawn" + (f"; told {', '.join(told)}" if told else ""))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _open(args) as ctx:
        try:
            documents = view(ctx, args.dossier)
        except UnknownDossier:
            documents = []
        lines = [] if args.json else _status_lines(ctx, documents)
    if args.json:
        print(json.dumps(documents, ensure_ascii=False, indent=2))
        return 0
    if not documents:
        print("no dossier at this node" if not args.dossier else f"no dossier {args.dossier} at this node")
        return 0 if not args.dossier else 1
    print("\n".join(lines))
    return 0


def _status_lines(ctx: NodeContext, documents: list[dict[str, Any]]) -> list[str]:
    """One line per dossier (state, due date, on time or late), then its steps; local times."""
    lines = []
    for item in documents:
        timing = {True: "on time", False: "LATE", None: ""}[item["on_time"]]
        lines.append(f"{item['code']}  {item['procedure']}  {item['state']}  due {local(ctx, item['due'])}  {timing}")
        for step in item["steps"]:
            flag = "  OVERDUE" if step["overdue"] else ""
            due, done = local(ctx, step["due"]), local(ctx, step["done_at"])
            lines.append(f"    {step['step']:<12} {step['agency']}  {step['state']:<9} due {due:<10} done {done}{flag}")
    return lines


def _register_storage_key(sub: Any) -> None:
    key = sub.add_parser("storage-key", help="a new key (0600) that encrypts the node's database payloads at rest; "
                         "name it in node.toml's [privacy] storage_key")
    key.add_argument("--out", type=Path, required=True, metavar="FILE")
    key.set_defaults(handler=_storage_key)


def _storage_key(args: argparse.Namespace) -> int:
    ColumnCipher.generate(args.out)
    print(f"storage key written to {args.out} (0600); add to node.toml:\n\n[privacy]\n"
          f'storage_key = "{args.out.resolve()}"\n\nThe node encrypts what it holds when it next starts. '
          "Keep a copy with the node's keys: without it the database's dossiers cannot be read.")
    return 0


def _dead(args: argparse.Namespace) -> int:
    config = NodeConfig.load(args.config)
    with NodeContext.open(config) as ctx, open_transport(config) as transport:
        letters = DeadLetters.of(ctx, transport)
        if args.action == "list":
            _print_dead(letters)
            return 0
        if not args.id:
            raise ConfigError("give --id (see `exchange dead list`)")
        letter = letters.find(args.id)
        if args.action == "show":
            _show_dead(letter, ctx, args)
            return 0
        replay(ctx, transport, letter, args.operator)
    print(f"replayed {args.id} (audited as done by {args.operator})")
    return 0


def _print_dead(letters: DeadLetters) -> None:
    for row in letters.outgoing:
        print(f"out  {row.message_id}  {row.kind} to {row.recipient}  dossier {row.dossier} step {row.step}: "
              f"{row.last_error}")
    for letter in letters.incoming:
        print(f"in   {letter.key}  message {letter.message.message_id}: {letter.reason}")
    print(f"{len(letters.outgoing)} outgoing, {len(letters.incoming)} incoming dead letters")


def _show_dead(letter: OutboxRow | DeadLetter, ctx: NodeContext, args: argparse.Namespace) -> None:
    """The header by default; the envelope or the decrypted payload only when asked."""
    body = letter.body if isinstance(letter, OutboxRow) else letter.message.body
    if args.envelope:
        sys.stdout.buffer.write(body)
    elif args.decrypt:
        if isinstance(letter, OutboxRow):
            raise ConfigError(f"{letter.message_id} is outgoing: its payload is encrypted to {letter.recipient}, "
                              "not to this node; show it with --envelope")
        env = ctx.opener.open(body, f"dead letter {letter.key}")
        sys.stdout.buffer.write(etree.tostring(env.payload, xml_declaration=True, encoding="UTF-8"))
    else:
        print(json.dumps(describe(letter), ensure_ascii=False, indent=2))


def _check(args: argparse.Namespace) -> int:
    """The running node's own view, from its heartbeat (the loop runs, its transport works, the
    rules and CRL in force, the webhook backlog), and the database's (nothing dead-lettered); the
    transport is not probed from here, nor are the rule files on disk read: the node runs with the
    rules it loaded, whatever an administrator is editing."""
    try:
        config = NodeConfig.load(args.config)
    except ExchangeError as exc:
        return _verdict(args, [str(exc)], {})
    now = time.time()
    problems = health.judge(config.state_dir, now, stale_after=args.stale_after, down_after=args.down_after)
    beat = health.Heartbeat.read(config.state_dir)
    report: dict[str, Any] = {"agency": str(config.agency), "heartbeat": beat.details(now) if beat else None}
    try:
        report.update(health.database_view(config))
        if report["outbox"].get("outbox_dead"):
            problems.append(f"{report['outbox']['outbox_dead']} outgoing transfer(s) dead-lettered")
    except ExchangeError as exc:
        problems.append(str(exc))
    if problems:
        return _verdict(args, problems, report)
    counts = report["outbox"]
    extra = (f", rules {beat.rules_digest[:12]}, webhook backlog {beat.webhook_backlog}"
             + (f", CRL fresh for {report['heartbeat']['crl_seconds_left']}s" if beat.crl_seconds_left is not None
                else "")) if beat and beat.rules_digest else ""
    line = (f"healthy: {config.agency}, {report['audit_entries']} audit entries, "
            f"{counts.get('outbox_pending', 0)} pending, {counts.get('outbox_published', 0)} awaiting receipts{extra}")
    return _verdict(args, [], report, line)


def _verdict(args: argparse.Namespace, problems: list[str], report: dict[str, Any], line: str = "") -> int:
    """Print check's verdict (one line, or a JSON document with ``--json``); 0 healthy, 1 not."""
    if args.json:
        print(json.dumps({"healthy": not problems, "problems": problems, **report}, ensure_ascii=False, indent=2))
    elif problems:
        print("unhealthy: " + "; ".join(problems), file=sys.stderr)
    else:
        print(line)
    return 1 if problems else 0
