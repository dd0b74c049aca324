"""The XSDs shipped as package data, compiled once, never fetched from the network.

Two validators read the same files. libxml2's (through lxml, the engine xmllint uses) decides
on the hot path: it costs tens of microseconds where xmlschema costs milliseconds, and every
envelope is validated. When a document fails, xmlschema explains: its messages name the path
and the expected content, which is what a person fixing a file needs.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import xmlschema
from lxml import etree

ENVELOPE = "envelope.xsd"
DOSSIER = "dossier.xsd"
RECEIPT = "receipt.xsd"
STATUS = "status.xsd"

MAX_REPORTED = 20
"""A broken document can have thousands of errors; people read the first few."""


def schema_dir() -> Path:
    """The directory of the installed XSDs, for tools such as ``xmllint --schema``."""
    return Path(str(resources.files("exchange") / "schemas"))


@functools.cache
def _fast(name: str) -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(schema_dir() / name), parser))


@functools.cache
def load(name: str) -> Any:
    """The xmlschema form of schema ``name``; imports resolve inside the package, offline."""
    return xmlschema.XMLSchema(str(schema_dir() / name), base_url=str(schema_dir()),
                               allow="sandbox")


def problems(name: str, root: etree._Element, source: str = "input") -> list[str]:
    """Every way ``root`` violates schema ``name``, as ``source:line: path: reason``; [] if valid."""
    fast = _fast(name)
    if fast.validate(root):
        return []
    found = [_describe(error, source) for error in load(name).iter_errors(root)]
    if not found:  # the two engines disagree: report libxml2's own words
        log: Any = fast.error_log
        found = [f"{source}:{e.line}: {e.message}" for e in log]
    if len(found) > MAX_REPORTED:
        found = [*found[:MAX_REPORTED], f"{source}: ({len(found) - MAX_REPORTED} more errors)"]
    return found


def _describe(error: Any, source: str) -> str:
    line = getattr(error, "sourceline", None)
    where = f"{source}:{line}" if line else source
    return f"{where}: {error.path or '/'}: {error.reason or error.message}"
