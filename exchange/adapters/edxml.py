"""edXML (QCVN 102:2016) packages, so that Vietnam's document-management systems can take part.

A transfer leaves as an ``edXML`` package: ``edXMLEnvelope`` (``edXMLHeader`` with the
``MessageHeader`` and the ``TraceHeaderList``, ``edXMLBody`` with the manifest) and the
attachments outside the envelope in ``AttachmentEncoded``. The dossier's own attachments go there,
and the dossier itself as ``dossier.xml``, so that a package this node exports imports back to
the same dossier. As OpenCPS does, the dossier code is the document's code. A status update
leaves as an edXML ``Status`` package with the QCVN 102 codes 01–06.

Import reads packages through the hardened parser and takes the dossier from ``dossier.xml``; a
package without one cannot carry an applicant's dossier and is refused with that reason.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass

from lxml import etree

from exchange import clock
from exchange.codes import AgencyCode, ProcedureCode
from exchange.envelope.dossier import DossierInfo, d, load
from exchange.envelope.messages import ExchangeStatus
from exchange.errors import InvalidDossier, InvalidEnvelope, UnknownDossier
from exchange.node.context import NodeContext
from exchange.node.status import NATIONAL_STATUS
from exchange.store.states import DossierState
from exchange.xml import safexml

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DOSSIER_ATTACHMENT = "dossier.xml"
BUSINESS_NEW = "0"
ICT = dt.timezone(dt.timedelta(hours=7))


def e(name: str) -> str:
    return f"{{{NS}}}{name}"


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, e(name))
    if text is not None:
        child.text = text
    return child


@dataclass(frozen=True)
class Organ:
    code: str
    name: str


def _organ(parent: etree._Element, name: str, organ: Organ) -> None:
    el = _sub(parent, name)
    _sub(el, "OrganId", organ.code)
    _sub(el, "OrganName", organ.name)


def _date(moment: dt.datetime) -> str:
    return moment.astimezone(ICT).strftime("%Y/%m/%d")


def export_transfer(dossier: etree._Element, sender: Organ, recipient: Organ, subject: str) -> bytes:
    """An edXML package carrying ``dossier`` from ``sender`` to ``recipient``."""
    info = DossierInfo.of(dossier)
    root = etree.Element(e("edXML"), nsmap={"edXML": NS})
    envelope = _sub(root, "edXMLEnvelope")
    header = _sub(envelope, "edXMLHeader")
    message = _sub(header, "MessageHeader")
    _organ(message, "From", sender)
    _organ(message, "To", recipient)
    code = _sub(message, "Code")
    _sub(code, "CodeNumber", str(info.code.sequence))
    _sub(code, "CodeNotation", str(info.procedure))
    promulgation = _sub(message, "PromulgationInfo")
    _sub(promulgation, "Place", sender.name)
    _sub(promulgation, "PromulgationDate", _date(info.received_at))
    kind = _sub(message, "DocumentType")
    _sub(kind, "Type", "1")
    _sub(kind, "TypeName", "Hồ sơ thủ tục hành chính liên thông")
    _sub(message, "Subject", subject)
    _sub(message, "Content", f"Hồ sơ {info.code} của {info.applicant}, thủ tục {info.procedure}")
    _sub(message, "SignerInfo", sender.name)
    _sub(message, "DueDate", info.due_date.strftime("%Y/%m/%d"))
    _sub(message, "DocumentId", f"{sender.code},{_date(info.received_at)},{info.code}")
    _sub(message, "SteeringType", "0")
    places = _sub(message, "ToPlaces")
    _sub(places, "Place", recipient.name)
    _trace(header, dossier)
    business = _sub(header, "Bussiness")  # sic: QCVN 102's spelling
    _sub(business, "BussinessDocType", BUSINESS_NEW)
    _attachments(root, envelope, dossier)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _trace(header: etree._Element, dossier: etree._Element) -> None:
    traces = _sub(header, "TraceHeaderList")
    for row in dossier.iterfind(f"{d('ProcessingControl')}/{d('Row')}"):
        trace = _sub(traces, "TraceHeader")
        _sub(trace, "OrganId", row.findtext(d("FromUnit")))
        _sub(trace, "Timestamp", row.findtext(d("Time")))


def _attachments(root: etree._Element, envelope: etree._Element, dossier: etree._Element) -> None:
    body = _sub(envelope, "edXMLBody")
    manifest = _sub(body, "Manifest")
    encoded = _sub(root, "AttachmentEncoded")
    items = [(DOSSIER_ATTACHMENT, "application/xml", "Hồ sơ (exchange dossier)",
              base64.b64encode(etree.tostring(dossier, encoding="UTF-8")).decode())]
    for attachment in dossier.iter(d("Attachment")):
        items.append((attachment.findtext(d("FileName")) or "", attachment.findtext(d("MediaType")) or "",
                      attachment.findtext(d("FileName")) or "", attachment.findtext(d("Content")) or ""))
    for index, (name, media, description, value) in enumerate(items, 1):
        reference = _sub(manifest, "Reference")
        _sub(reference, "ContentId", f"cid:{index}")
        _sub(reference, "ContentType", media)
        _sub(reference, "Description", description)
        item = _sub(encoded, "Attachment")
        _sub(item, "ContentId", f"cid:{index}")
        _sub(item, "AttachmentName", name)
        _sub(item, "ContentType", media)
        _sub(item, "Value", value)


def import_package(data: bytes, source: str = "edXML package") -> tuple[etree._Element, DossierInfo]:
    """The dossier an edXML package carries, validated like any dossier."""
    try:
        root = safexml.parse(data, source=source)
    except InvalidEnvelope as exc:
        raise InvalidDossier(exc.message) from None
    if root.tag != e("edXML") or root.find(e("edXMLEnvelope")) is None:
        raise InvalidDossier(f"{source}: not an edXML package (expected {e('edXML')} with an edXMLEnvelope)")
    for attachment in root.iterfind(f"{e('AttachmentEncoded')}/{e('Attachment')}"):
        if attachment.findtext(e("AttachmentName")) == DOSSIER_ATTACHMENT:
            try:
                inner = base64.b64decode(attachment.findtext(e("Value")) or "", validate=True)
            except binascii.Error as exc:
                raise InvalidDossier(f"{source}: attachment {DOSSIER_ATTACHMENT} is not base64 ({exc})") from None
            return load(inner, f"{source} ({DOSSIER_ATTACHMENT})")
    names = [a.findtext(e("AttachmentName")) for a in root.iterfind(f"{e('AttachmentEncoded')}/{e('Attachment')}")]
    raise InvalidDossier(f"{source}: the package carries no {DOSSIER_ATTACHMENT} attachment (it has "
                         f"{', '.join(filter(None, names)) or 'none'}), so it holds no applicant's dossier "
                         "to route; ask the sender to attach it")


STATUS_CODES = frozenset({"01", "02", "03", "04", "05", "06", "13", "15", "16"})
"""QCVN 102's status codes, and the national axis's take-back request (13), accepted (15), refused (16)."""


def export_status(dossier_code: str, sender: Organ, status_code: str, description: str,
                  at: dt.datetime, staff: str = "") -> bytes:
    """An edXML status package: 01 arrived ... 06 done (13, 15, 16 on the national axis's
    take-backs), answering the dossier's document."""
    if status_code not in STATUS_CODES:
        raise InvalidDossier(f"edXML status code {status_code!r}: expected 01 to 06, 13, 15 or 16")
    root = etree.Element(e("Status"), nsmap={"edXML": NS})
    response = _sub(root, "ResponseFor")
    _sub(response, "OrganId", dossier_code.rsplit("-", 2)[0])
    _sub(response, "Code", dossier_code)
    _sub(response, "DocumentId", dossier_code)
    _organ(root, "From", sender)
    _sub(root, "StatusCode", status_code)
    _sub(root, "Description", description)
    _sub(root, "Timestamp", at.astimezone(ICT).strftime("%Y/%m/%d %H:%M:%S"))
    staff_el = _sub(root, "StaffInfo")
    _sub(staff_el, "Department", sender.name)
    _sub(staff_el, "Staff", staff or "exchange node")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


# A node's stored dossiers as packages -------------------------------------------------------

TAKE_BACK_ACCEPTED = "15"
"""The national axis's code for a take-back (withdrawal) accepted; QCVN 102 itself stops at 06."""
STATE_TO_STATUS: dict[DossierState, str] = {
    DossierState.PROCESSING: ExchangeStatus.PROCESSING.value,
    DossierState.PAUSED: ExchangeStatus.PROCESSING.value,
    DossierState.SUPPLEMENT_REQUESTED: ExchangeStatus.PROCESSING.value,
    DossierState.COMPLETED: ExchangeStatus.DONE.value,
    DossierState.REFUSED: ExchangeStatus.REFUSED.value,
    DossierState.WITHDRAWN: TAKE_BACK_ACCEPTED,
}
"""The edXML status code of every state a dossier can be in at this node, when no peer status says
more. Paused (a fee) and supplement-requested are 05: the dossier is still being processed by the
receiver, who asked the applicant for something; 13 is a take-back *request* by the sender, which
neither is. A withdrawal is the take-back done: 15. The portal's code (1-10) travels beside it in
the description, from ``NATIONAL_STATUS`` (the one table of portal codes)."""


def _organ_of(ctx: NodeContext, code: str) -> Organ:
    agency = ctx.rules.agencies.get(code)  # type: ignore[call-overload]
    return Organ(code, agency.name if agency else code)


def export_stored(ctx: NodeContext, code: str, to: AgencyCode) -> bytes:
    """A dossier held at this node as an edXML package for ``to``."""
    row, payload = ctx.store.dossier(code), ctx.store.dossier_payload(code)
    if row is None or payload is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    dossier = safexml.parse(payload, source=f"dossier {code}")
    subject = ctx.rules.procedure(ProcedureCode(row.procedure)).name
    return export_transfer(dossier, _organ_of(ctx, str(ctx.agency)), _organ_of(ctx, str(to)), subject)


def export_stored_status(ctx: NodeContext, code: str) -> tuple[str, bytes]:
    """The edXML status code of a dossier held here, and its status package."""
    row = ctx.store.dossier(code)
    if row is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    statuses = ctx.store.statuses(code)
    last = statuses[-1] if statuses else None
    if last is not None and row.state is DossierState.PROCESSING:
        status, note = last.exchange_status, last.note or ""
    else:
        status, note = STATE_TO_STATUS[row.state], f"dossier {row.state}"
    note = f"{note} (TrangThaiHoSo {int(NATIONAL_STATUS[row.state])})"
    return status, export_status(code, _organ_of(ctx, str(ctx.agency)), status, note, clock.now())
