"""``exchange rules``: check, explain, draw and compare routing rules; migrate a node's dossiers
in flight through a reorganisation."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from exchange import clock
from exchange.commands import agency_arg, procedure_arg
from exchange.errors import ConfigError, RuleError
from exchange.files import write_atomic
from exchange.node import migrate
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.rules import tools as rules_tools
from exchange.rules.load import load

GRAPHVIZ_TIMEOUT = 60


def register(commands: Any) -> None:
    group = commands.add_parser("rules", help="check, explain, draw and compare routing rules")
    sub = group.add_subparsers(dest="rules_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="load a rule directory; a summary or every problem")
    check.add_argument("dir", type=Path, metavar="DIR")
    check.set_defaults(handler=_check)

    explain = sub.add_parser("explain", help="a procedure's route from one origin, with due dates")
    explain.add_argument("dir", type=Path, metavar="DIR")
    explain.add_argument("--procedure", type=procedure_arg, required=True, metavar="CODE")
    explain.add_argument("--origin", type=agency_arg, required=True, metavar="AGENCY")
    explain.add_argument("--received-at", type=_moment, metavar="ISO8601",
                         help="when the desk received the dossier (default: now), "
                              "e.g. 2026-03-02T09:30+07:00")
    explain.set_defaults(handler=_explain)

    graph = sub.add_parser("graph", help="a picture of a procedure's route")
    graph.add_argument("dir", type=Path, metavar="DIR")
    graph.add_argument("--procedure", type=procedure_arg, required=True, metavar="CODE")
    graph.add_argument("--origin", type=agency_arg, metavar="AGENCY",
                       help="name the agencies as resolved for this origin")
    graph.add_argument("--format", choices=("dot", "svg", "png"), default="dot")
    graph.add_argument("--out", type=Path, metavar="FILE", help="default: standard output")
    graph.set_defaults(handler=_graph)

    diff = sub.add_parser("diff", help="what an edit of the rules, or a dated reorganisation, changes, in words")
    diff.add_argument("old", type=Path, metavar="DIR_OLD")
    diff.add_argument("new", type=Path, metavar="DIR_NEW", nargs="?",
                      help="the edited rules; omit it with --on to read one dated rule set")
    diff.add_argument("--on", type=_date, metavar="YYYY-MM-DD",
                      help="what changes on this day in DIR_OLD's dated rules: agencies ending (successor "
                           "by successor), beginning, procedures replaced, performers moved")
    diff.set_defaults(handler=_diff)


    migrate = sub.add_parser("migrate", help="hand this node's dossiers in flight to the successors of "
                             "abolished agencies (a reorganisation)")
    migrate.add_argument("--config", type=Path, required=True, metavar="FILE", help="the node's node.toml")
    migrate.add_argument("--at", type=_moment, metavar="ISO8601",
                         help="the moment to migrate for (default: now), e.g. 2025-07-01T00:00+07:00")
    migrate.add_argument("--dry-run", action="store_true", help="list what would move; change nothing")
    migrate.set_defaults(handler=_migrate)


def _moment(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time such as 2026-03-02T09:30+07:00, "
                                         f"got {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no zone offset; add one, such as +07:00")
    return moment


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date such as 2025-07-01, got {text!r}") from None


def _check(args: argparse.Namespace) -> int:
    try:
        rules = load(args.dir)
    except RuleError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"{args.dir}: {rules_tools.summary(rules)}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    rules = load(args.dir)
    received = args.received_at or dt.datetime.now(rules.calendar.timezone)
    print(rules_tools.explain(rules, args.procedure, args.origin, received))
    return 0


def _graph(args: argparse.Namespace) -> int:
    rules = load(args.dir)
    source = rules_tools.dot(rules, args.procedure, args.origin).encode("utf-8")
    data = source if args.format == "dot" else _render(source, args.format)
    if args.out is None:
        sys.stdout.buffer.write(data)
    else:
        write_atomic(args.out, data)
    return 0


def _render(source: bytes, fmt: str) -> bytes:
    tool = shutil.which("dot")
    if tool is None:
        raise ConfigError(f"Graphviz 'dot' is not installed, so no {fmt}: use --format dot, or "
                          "apt-get install graphviz")
    result = subprocess.run([tool, f"-T{fmt}"], input=source, capture_output=True,
                            timeout=GRAPHVIZ_TIMEOUT, check=False)
    if result.returncode != 0:
        raise ConfigError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _diff(args: argparse.Namespace) -> int:
    if args.on is not None and args.new is None:
        return _reorganisation(args)
    if args.new is None:
        raise ConfigError("give DIR_NEW to compare two rule sets, or --on YYYY-MM-DD to read one dated rule set")
    old, new = load(args.old), load(args.new)
    changes = rules_tools.diff(old, new)
    if not changes:
        print(f"no change (digest sha256:{new.digest})")
        return 0
    for line in changes:
        print(line)
    print(f"{len(changes)} change(s): sha256:{old.digest[:12]}… → sha256:{new.digest[:12]}…")
    return 0


def _reorganisation(args: argparse.Namespace) -> int:
    rules = load(args.old)
    changes = rules_tools.reorganisation(rules, args.on)
    if not changes:
        print(f"nothing in {args.old} changes on {args.on}")
        return 0
    for line in changes:
        print(line)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    with NodeContext.open(NodeConfig.load(args.config)) as ctx:
        at = args.at or clock.now()
        moves = migrate.plan(ctx, at)
        if not args.dry_run:
            migrate.apply(ctx, moves, at)
        for move in moves:
            print(move.describe(ctx, done=not args.dry_run))
        why = migrate.abolished(ctx, at)
    handed = sum(m.action == migrate.HANDED_OVER for m in moves)
    verb = "would move" if args.dry_run else "moved"
    print(f"{len(moves)} step(s) {verb}: {handed} handed over, {len(moves) - handed} reassigned"
          + (f"; {why}: this node takes no new work" if why else ""))
    return 0
