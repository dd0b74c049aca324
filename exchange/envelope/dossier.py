"""Dossier documents: reading one from an agency system, checked before it travels."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from dataclasses import dataclass

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


def attachment_problems(root: etree._Element, source: str) -> list[AttachmentProblem]:
    """Each attachment that is not strict base64 or whose SHA-256 does not match its content."""
    found = []
    for attachment in root.iter(d("Attachment")):
        where = f"{source}:{attachment.sourceline}" if attachment.sourceline else source
        name = attachment.findtext(d("FileName")) or ""
        declared = attachment.findtext(d("Sha256"))
        try:
            text = "".join((attachment.findtext(d("Content")) or "").split())
            content = base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            found.append(AttachmentProblem(where, name, f"Content is not base64 ({exc})", True))
            continue
        actual = hashlib.sha256(content).hexdigest()
        if actual != declared:
            found.append(AttachmentProblem(
                where, name, f"Sha256 is {declared} but the content hashes to {actual}", False))
    return found
