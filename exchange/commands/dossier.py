"""``exchange dossier``: sample dossiers for trials and demos, and checking a dossier file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exchange.commands import agency_arg, positive_int, procedure_arg, read_input
from exchange.demo import samples
from exchange.envelope import dossier
from exchange.files import write_atomic


def register(commands: Any) -> None:
    group = commands.add_parser("dossier", help="make or check dossier files")
    sub = group.add_subparsers(dest="dossier_command", metavar="ACTION", required=True)

    sample = sub.add_parser("sample", help="write a valid, realistic dossier")
    sample.add_argument("--agency", type=agency_arg, required=True, metavar="CODE",
                        help="the receiving desk (the dossier code starts with it)")
    sample.add_argument("--procedure", type=procedure_arg, required=True, metavar="CODE")
    sample.add_argument("--size-kb", type=positive_int, default=10, metavar="N",
                        help="about N KiB, mostly attachments (default 10)")
    sample.add_argument("--sequence", type=positive_int, default=1, help="daily sequence number")
    sample.add_argument("--seed", type=int, help="make the same dossier every time")
    sample.add_argument("--out", type=Path, required=True, metavar="FILE")
    sample.set_defaults(handler=_sample)

    check = sub.add_parser("check", help="validate a dossier file against dossier.xsd")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_check)


def _sample(args: argparse.Namespace) -> int:
    spec = samples.SampleSpec(args.agency, args.procedure, size_kb=args.size_kb,
                              sequence=max(1, args.sequence), seed=args.seed)
    data = samples.to_bytes(samples.sample_dossier(spec))
    write_atomic(args.out, data)
    _, info = dossier.load(data, str(args.out))
    print(f"{info.code} ({info.procedure}, {info.applicant}, {len(data)} bytes) -> {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    _, info = dossier.load(read_input(args.file), str(args.file))
    print(f"valid: {info.code} procedure {info.procedure} received by {info.receiving_agency} "
          f"at {info.received_at:%Y-%m-%d %H:%M}Z, due {info.due_date}")
    return 0
