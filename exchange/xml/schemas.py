"""The XSDs shipped as package data, compiled once, never fetched from the network.

Two validators read the same files. libxml2's (through lxml, the engine xmllint uses) decides
on the hot path: it costs tens of microseconds where xmlschema costs milliseconds, and every
envelope is validated. When a document of up to ``EXPLAINED_NODES`` nodes fails, xmlschema
explains: its messages name the path and the expected content, which is what a person fixing a
file needs. A larger one gets libxml2's messages, which cost nothing more.
"""

from __future__ import annotations

import functools
import itertools
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

ENVELOPE = "envelope.xsd"
DOSSIER = "dossier.xsd"
RECEIPT = "receipt.xsd"
STATUS = "status.xsd"
ROUTING_RULES = "routing-rules.xsd"

MAX_REPORTED = 20
"""A broken document can have thousands of errors; people read the first few."""

EXPLAINED_NODES = 2_000
"""xmlschema spends some 50 us per node explaining a failure, however few errors are asked for;
a larger document is explained in libxml2's words (with line numbers), so that refusing it costs
milliseconds, not seconds."""


def schema_dir() -> Path:
    """The directory of the installed XSDs, for tools such as ``xmllint --schema``."""
    return Path(str(resources.files("exchange") / "schemas"))


class _PackageResolver(etree.Resolver):
    """Resolves schema imports inside the package only; optionally relaxes base64Binary.

    libxml2 checks xs:base64Binary at about 5 ms per MiB, ten times the cost of decoding it;
    on the hot path the caller decodes every attachment anyway (to check its SHA-256), so the
    relaxed schema types base64 content as a string and the decoder does the lexical check.
    """

    def __init__(self, relax_base64: bool) -> None:
        super().__init__()
        self.relax_base64 = relax_base64

    def resolve(self, system_url: str, public_id: str, context: object) -> Any:  # type: ignore[override]
        path = schema_dir() / Path(system_url).name
        if not system_url.endswith(".xsd") or not path.is_file():
            raise ValueError(f"schema import outside the package refused: {system_url}")
        text = path.read_bytes()
        if self.relax_base64:
            text = text.replace(b'type="xs:base64Binary"', b'type="xs:string"')
        return self.resolve_string(text, context, base_url=str(path))


@functools.cache
def _compiled(name: str, relax_base64: bool) -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(_PackageResolver(relax_base64))
    return etree.XMLSchema(etree.parse(str(schema_dir() / name), parser))


def compiled(name: str) -> etree.XMLSchema:
    """The strict libxml2 validator of schema ``name`` (its error log has lines and columns)."""
    return _compiled(name, False)


@functools.cache
def load(name: str) -> Any:
    """The xmlschema form of schema ``name``; imports resolve inside the package, offline.
    Imported here, on the first failure to explain: it is a fifth of every command's start-up."""
    import xmlschema

    return xmlschema.XMLSchema(str(schema_dir() / name), base_url=str(schema_dir()),
                               allow="sandbox")


def problems(name: str, root: etree._Element, source: str = "input", *,
             base64_checked_by_caller: bool = False) -> list[str]:
    """Every way ``root`` violates schema ``name``, as ``source:line: path: reason``; [] if valid.

    With ``base64_checked_by_caller`` the lexical form of base64 content is left to the caller,
    who must decode it strictly (``dossier.attachment_problems`` does).
    """
    fast = _compiled(name, base64_checked_by_caller)
    if fast.validate(root):
        return []
    found = []
    if _small(root):
        errors = itertools.islice(load(name).iter_errors(root), MAX_REPORTED + 1)
        found = [_describe(error, source) for error in errors]
    if not found:  # a large document, or the two engines disagree: libxml2's own words
        log: Any = fast.error_log
        found = [f"{source}:{e.line}: {e.message}" for e in itertools.islice(log, MAX_REPORTED + 1)]
    if len(found) > MAX_REPORTED:
        found = [*found[:MAX_REPORTED], f"{source}: (more errors not listed)"]
    return found


def _small(root: etree._Element) -> bool:
    return next(itertools.islice(root.iter(), EXPLAINED_NODES, None), None) is None


def _describe(error: Any, source: str) -> str:
    line = getattr(error, "sourceline", None)
    where = f"{source}:{line}" if line else source
    return f"{where}: {error.path or '/'}: {error.reason or error.message}"
