"""Dossier documents: reading one from an agency system, checked before it travels."""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
import mimetypes
import re
from dataclasses import dataclass

import pybase64
from lxml import etree

from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.errors import InvalidDossier, InvalidEnvelope
from exchange.xml import safexml, schemas, shape
from exchange.xml.datatypes import parse_date, parse_datetime
from exchange.xml.names import DOSSIER_NS, q


def d(name: str) -> str:
    return q(name, DOSSIER_NS)


@dataclass(frozen=True, slots=True)
class DossierInfo:
    """What routing needs from a dossier, read once from its validated XML."""

    code: DossierCode
    procedure: ProcedureCode
    receiving_agency: AgencyCode
    applicant: str
    received_at: dt.datetime
    due_date: dt.date

    @classmethod
    def of(cls, root: etree._Element) -> DossierInfo:
        def text(name: str) -> str:
            return root.findtext(d(name)) or ""

        return cls(
            code=DossierCode(text("Code")),
            procedure=ProcedureCode(text("Procedure")),
            receiving_agency=AgencyCode(text("ReceivingAgency")),
            applicant=root.findtext(f"{d('Applicant')}/{d('FullName')}") or "",
            received_at=parse_datetime(text("ReceivedAt")),
            due_date=parse_date(text("DueDate")),
        )


def received_at(root: etree._Element) -> dt.datetime:
    """When the desk received a dossier (ValueError if it does not say): all a transfer's routing
    needs of it, read without the rest of ``DossierInfo``."""
    return parse_datetime(root.findtext(d("ReceivedAt")) or "")


def load(data: bytes, source: str = "dossier") -> tuple[etree._Element, DossierInfo]:
    """Parse, validate and check a dossier; InvalidDossier lists every problem with its line."""
    try:
        root = safexml.parse(data, source=source)
        shape.check(root, shape.DOSSIER, source)
    except InvalidEnvelope as exc:
        raise InvalidDossier(exc.message) from None
    problems = schemas.problems(schemas.DOSSIER, root, source, base64_checked_by_caller=True)
    if not problems:
        problems = [str(p) for p in attachment_problems(root, source)]
    if problems:
        raise InvalidDossier("\n".join(problems))
    try:
        return root, DossierInfo.of(root)
    except ValueError as exc:  # a schema-valid value this node cannot hold (a year past 9999)
        raise InvalidDossier(f"{source}: {exc}") from None


@dataclass(frozen=True, slots=True)
class AttachmentProblem:
    """An attachment whose content is not base64, or does not hash to its declared SHA-256."""

    where: str
    name: str
    text: str
    undecodable: bool

    def __str__(self) -> str:
        return f"{self.where}: attachment {self.name!r}: {self.text}"


def strict_base64(text: str) -> bytes:
    """xs:base64Binary's content (whitespace allowed between characters), strictly decoded. SIMD
    ``pybase64`` because this runs on every attachment of every envelope opened: 50 times faster than
    ``binascii`` at 100 KiB, which made base64 the largest cost of opening a big dossier."""
    try:
        return pybase64.b64decode(text, validate=True)
    except binascii.Error:
        return pybase64.b64decode("".join(text.split()), validate=True)


def attachment_problems(root: etree._Element, source: str) -> list[AttachmentProblem]:
    """Each attachment that is not strict base64 or whose SHA-256 does not match its content."""
    found = []
    for attachment in root.iter(d("Attachment")):
        where = f"{source}:{attachment.sourceline}" if attachment.sourceline else source
        name = attachment.findtext(d("FileName")) or ""
        declared = attachment.findtext(d("Sha256"))
        try:
            content = strict_base64(attachment.findtext(d("Content")) or "")
        except binascii.Error as exc:
            found.append(AttachmentProblem(where, name, f"Content is not base64 ({exc})", True))
            continue
        actual = hashlib.sha256(content).hexdigest()
        if actual != declared:
            found.append(AttachmentProblem(
                where, name, f"Sha256 is {declared} but the content hashes to {actual}", False))
    return found


# Changing a dossier on its way: supplements and joins ------------------------------------

MAX_DOCUMENTS = 100
"""dossier.xsd's bound on a dossier's documents."""


@dataclass(frozen=True, slots=True)
class Supplement:
    """One file the applicant brought to the desk to supplement a dossier."""

    file_name: str
    media_type: str
    content: bytes
    title: str | None = None


def media_type(file_name: str) -> str:
    """The media type a file's name suggests (dossier.xsd wants ``type/subtype``)."""
    guessed = mimetypes.guess_type(file_name, strict=False)[0]
    return guessed if guessed and re.fullmatch(r"[a-z]+/[a-zA-Z0-9.+\-]+", guessed) else "application/octet-stream"


def add_documents(root: etree._Element, files: list[Supplement], kind: str = "supplement") -> etree._Element:
    """A copy of the dossier with one more document per file (its title, or its file name), each
    attachment hashed. InvalidDossier when the dossier would hold too many documents."""
    copy = safexml.parse(etree.tostring(root))
    documents = copy.find(d("Documents"))
    assert documents is not None  # dossier.xsd requires it
    if len(documents) + len(files) > MAX_DOCUMENTS:
        raise InvalidDossier(f"dossier {copy.findtext(d('Code'))} holds {len(documents)} documents; "
                             f"{len(files)} more would pass the {MAX_DOCUMENTS} dossier.xsd allows")
    for item in files:
        document = etree.SubElement(documents, d("Document"), kind=kind)
        etree.SubElement(document, d("Title")).text = (item.title or item.file_name)[:500]
        attachment = etree.SubElement(document, d("Attachment"))
        for name, text in (("FileName", item.file_name[:500]), ("MediaType", item.media_type),
                           ("Sha256", hashlib.sha256(item.content).hexdigest()),
                           ("Content", pybase64.b64encode(item.content).decode("ascii"))):
            etree.SubElement(attachment, d(name)).text = text
    return copy


def merge(held: etree._Element, incoming: etree._Element) -> etree._Element:
    """One dossier from two copies of it (branches meeting at a join, a supplement meeting the copy
    a step held): ``incoming`` with the documents and control rows only ``held`` has, control rows
    in time order. Nothing is lost, nothing appears twice."""
    merged = safexml.parse(etree.tostring(incoming))
    _union(merged.find(d("Documents")), held.find(d("Documents")), MAX_DOCUMENTS)
    control = merged.find(d("ProcessingControl"))
    _union(control, held.find(d("ProcessingControl")), 200)
    if control is not None:
        control[:] = sorted(control, key=lambda row: row.findtext(d("Time")) or "")
    return merged


def _union(into: etree._Element | None, other: etree._Element | None, bound: int) -> None:
    if into is None or other is None:
        return
    seen = {_canonical(child) for child in into}
    for child in other:
        if len(into) >= bound:
            return
        key = _canonical(child)
        if key not in seen:
            seen.add(key)
            into.append(safexml.parse(etree.tostring(child)))


def _canonical(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True)
