"""The hardened parser: size cap first, no DOCTYPE, no entities, no network, no huge trees."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from exchange.errors import MalformedXml, TooLarge
from exchange.xml import safexml


def test_size_cap_is_checked_before_parsing() -> None:
    """Input over the cap is refused as too large without the parser ever being called."""
    parser_called = mock.patch.object(safexml.etree, "fromstring", side_effect=AssertionError("parsed"))
    with parser_called, pytest.raises(TooLarge, match="exceeds the cap of 100"):
        safexml.parse(b"<a>" + b"x" * 200 + b"</a>", max_bytes=100)


def test_well_formed_input_parses() -> None:
    """Ordinary XML within the cap parses into a tree."""
    assert safexml.parse(b"<a><b>1</b></a>").findtext("b") == "1"


def test_malformed_input_names_line_and_column() -> None:
    """Broken XML is refused as malformed with its line and column."""
    with pytest.raises(MalformedXml, match="line 2, column"):
        safexml.parse(b"<a>\n<b></a>", source="in.xml")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe: opening it for reading blocks, so a parser that reads it hangs the test."""
    path = tmp_path / "secret"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_external_entity_is_refused_without_reading_the_file(fifo: Path, encoding: str) -> None:
    """An external entity is refused, even in UTF-16 where a byte scan cannot see it, unread."""
    doc = (f'<?xml version="1.0" encoding="{encoding}"?>\n'
           f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{fifo}">]><a>&x;</a>')
    with pytest.raises(MalformedXml, match="DOCTYPE"):
        safexml.parse(doc.encode(encoding))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_entity_bomb_is_refused(encoding: str) -> None:
    """A billion-laughs document is refused (libxml2's amplification guard backs up UTF-16)."""
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    doc = (f'<?xml version="1.0" encoding="{encoding}"?>\n'
           f'<!DOCTYPE a [<!ENTITY l0 "lol">{lol}]><a>&l9;</a>')
    with pytest.raises(MalformedXml, match="DOCTYPE|amplification"):
        safexml.parse(doc.encode(encoding))


def test_external_dtd_is_refused_without_network() -> None:
    """A DOCTYPE pointing at a remote DTD is refused before any fetch is attempted."""
    doc = b'<!DOCTYPE a SYSTEM "http://127.0.0.1:9/evil.dtd"><a/>'
    with pytest.raises(MalformedXml, match="DOCTYPE"):
        safexml.parse(doc)


def test_huge_depth_is_refused() -> None:
    """A tree nested deeper than libxml2's safe limit is refused, not parsed."""
    depth = 10_000
    with pytest.raises(MalformedXml):
        safexml.parse(b"<a>" * depth + b"</a>" * depth)
