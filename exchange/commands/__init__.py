"""One module per command group; each has ``register(subparsers)`` and handlers returning an exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import ConfigError, InvalidCode


def agency_arg(text: str) -> AgencyCode:
    """argparse type: a usage error (exit 2) that quotes the expected form."""
    try:
        return AgencyCode.parse(text)
    except InvalidCode as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def procedure_arg(text: str) -> ProcedureCode:
    try:
        return ProcedureCode(text.strip())
    except InvalidCode as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected zero or more, got {value}")
    return value


def read_input(path: Path) -> bytes:
    """The bytes of an input file, '-' for standard input; a missing file is a ConfigError."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a file") from None
