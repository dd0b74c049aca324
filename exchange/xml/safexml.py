"""The one hardened XML parser for everything that arrives from outside.

The size cap is checked before a byte is parsed; a DOCTYPE is refused (so no entity can be
declared, let alone expanded), no external resource is ever fetched, and libxml2's limits on
huge trees stay on.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from exchange.errors import MalformedXml, TooLarge

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
"""Envelopes carry attachments; 16 MiB is far above any real dossier and far below harm."""

_DOCTYPE = b"<!DOCTYPE"


def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        collect_ids=False,
    )


@dataclass(frozen=True)
class SafeParser:
    """Parses untrusted bytes into an lxml tree, or refuses with a specific error."""

    max_bytes: int = DEFAULT_MAX_BYTES
    source: str = "input"

    def parse(self, data: bytes) -> etree._Element:
        if len(data) > self.max_bytes:
            raise TooLarge(f"{self.source}: {len(data)} bytes exceeds the cap of {self.max_bytes}")
        if _DOCTYPE in data:
            raise MalformedXml(f"{self.source}: a DOCTYPE is not allowed")
        try:
            root = etree.fromstring(data, parser=_PARSER)
        except etree.XMLSyntaxError as exc:
            line, column = exc.position
            raise MalformedXml(f"{self.source}: {_describe(exc)}", line, column) from None
        _refuse_dtd_and_entities(root, self.source)
        return root


def _describe(exc: etree.XMLSyntaxError) -> str:
    line, column = exc.position
    return f"line {line}, column {column}: {exc.msg}"


def _refuse_dtd_and_entities(root: etree._Element, source: str) -> None:
    # A document in another encoding can hide its DOCTYPE from the byte scan above.
    docinfo = root.getroottree().docinfo
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise MalformedXml(f"{source}: a DOCTYPE is not allowed")
    for _ in root.iter(etree.Entity):
        raise MalformedXml(f"{source}: entity references are not allowed")


_PARSER = _new_parser()


def parse(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, source: str = "input") -> etree._Element:
    """Parse untrusted XML bytes with the hardened parser."""
    return SafeParser(max_bytes=max_bytes, source=source).parse(data)
