"""The ``exchange`` command line: a thin layer that parses arguments and calls the core.

Exit codes are a contract: 0 success, 1 refused or invalid input (the reason on stderr),
2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from exchange.commands import audit, config, demo, dossier, edxml, envelope, node, pki, rules, transport
from exchange.errors import ExchangeError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange",
        description="Signed, audited dossier exchange between agencies (một cửa liên thông).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (pki, dossier, envelope, rules, audit, transport, node, config, edxml, demo):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        result: int = args.handler(args)
    except ExchangeError as exc:
        print(f"exchange: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `exchange ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return result


if __name__ == "__main__":
    sys.exit(main())
