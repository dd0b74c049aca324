"""Slips for the desk and the applicant: the appointment slip (phiếu hẹn trả kết quả) when a
dossier is received, and the apology slip (phiếu xin lỗi và hẹn lại ngày trả kết quả) when a step
is late. Each slip is one XML document and one printable HTML page in ``slips/`` under the
delivery folder.

Exactly once, across a crash: ``prepare`` writes both files, fsynced, into ``slips/.pending/``
as copies named by a random token; ``record``, inside the transaction that records what the slip
is about (the dossier taken in, the late step done, the apology received), appends a
``delivered`` audit entry (``via: slip``) naming each file and its copy, which commits with that
change or not at all. ``issue`` does both inside the caller's transaction; ``submit`` prepares
before it takes the database's write lock, so that two fsyncs do not hold every other writer
(the running node among them) waiting. ``publish``, called after the commit and at every
housekeeping round of the daemon, renames into ``slips/`` each pending copy whose entry
committed; a copy left by a rolled-back transaction, or by an issue that lost a race, is
removed once it is old. A file is renamed at most once (the rename consumes its pending copy),
and only the copy its committed entry names.
"""

from __future__ import annotations

import datetime as dt
import html
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from exchange import clock
from exchange.audit.entries import Entry, Event
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.errors import ExchangeError, InvalidInput, UnknownDossier
from exchange.files import PRIVATE_MODE, sync_dir, write_atomic
from exchange.node.context import NodeContext
from exchange.xml import safexml
from exchange.xml.names import DOSSIER_NS, STATUS_NS, q

FOLDER = "slips"
"""Slips go beside the delivered envelopes, in their own folder of the delivery folder."""
PENDING = ".pending"
STALE_SECONDS = 600.0
"""A pending slip whose transaction never committed is removed after this long."""
SLIP_NS = "urn:vn-exchange:slip:1"
PAUSED_NOTE = ("Thời gian bổ sung, hoàn thiện hồ sơ không tính vào thời hạn giải quyết; "
               "ngày hẹn trả kết quả được lùi tương ứng.")
"""On the supplement slip: the days the applicant takes do not count (the deadlines move by them)."""
DEFAULT_LATE_REASON = "Hồ sơ chưa được giải quyết đúng hạn do cần thêm thời gian thẩm định."
"""The apology's reason when the late agency gives none (``exchange done --late-reason``)."""


class SlipError(InvalidInput):
    """A slip's option is wrong (a new date that is not a date, or is in the past)."""


@dataclass(frozen=True)
class Slip:
    """What a slip says; ``kind`` is ``appointment``, ``apology`` or ``supplement``."""

    kind: str
    dossier: str
    procedure: str
    procedure_name: str
    applicant: str
    received_at: dt.datetime
    due: dt.date
    agency_name: str
    step: str | None = None
    reason: str | None = None
    asked: int = 1
    """Of a supplement slip: the how-manieth request at that step (each has its own files)."""

    @property
    def stem(self) -> str:
        if self.kind == "appointment":
            return f"phieu-hen-{self.dossier}"
        if self.kind == "supplement":
            again = f"-lan-{self.asked}" if self.asked > 1 else ""
            return f"phieu-yeu-cau-bo-sung-{self.dossier}-{self.step}{again}"
        return f"phieu-xin-loi-{self.dossier}-{self.step}"

    @property
    def title(self) -> str:
        if self.kind == "appointment":
            return "PHIẾU HẸN TRẢ KẾT QUẢ"
        if self.kind == "supplement":
            return "PHIẾU YÊU CẦU BỔ SUNG, HOÀN THIỆN HỒ SƠ"
        return "PHIẾU XIN LỖI VÀ HẸN LẠI NGÀY TRẢ KẾT QUẢ"


# What a slip says -------------------------------------------------------------------------

def appointment(ctx: NodeContext, code: DossierCode, dossier: etree._Element, received_at: dt.datetime,
                procedure: ProcedureCode | None = None) -> Slip:
    """The appointment slip of a dossier this node's desk received (``procedure``: of a dossier
    not recorded yet)."""
    procedure = procedure or _procedure(ctx, code)
    return Slip("appointment", str(code), str(procedure), ctx.rules.procedure(procedure).name,
                applicant_of(dossier), received_at, ctx.rules.due_date(procedure, received_at),
                _agency_name(ctx, ctx.agency))


def apology(ctx: NodeContext, code: DossierCode, dossier: etree._Element, received_at: dt.datetime, step: str,
            new_date: dt.date, reason: str | None, late_agency: AgencyCode) -> Slip:
    """The apology slip of a late step, addressed to the applicant, from the late agency."""
    procedure = _procedure(ctx, code)
    return Slip("apology", str(code), str(procedure), ctx.rules.procedure(procedure).name,
                applicant_of(dossier), received_at, new_date, _agency_name(ctx, late_agency), step,
                reason or DEFAULT_LATE_REASON)


def supplement_request(ctx: NodeContext, code: DossierCode, dossier: etree._Element, received_at: dt.datetime,
                       step: str, reason: str, asking: AgencyCode, due: dt.date, asked: int = 1) -> Slip:
    """The slip the desk gives the applicant when a step asks for more documents: what is missing,
    and that the clock stands still until the documents come."""
    procedure = _procedure(ctx, code)
    return Slip("supplement", str(code), str(procedure), ctx.rules.procedure(procedure).name,
                applicant_of(dossier), received_at, due, _agency_name(ctx, asking), step, reason, asked)


def _procedure(ctx: NodeContext, code: DossierCode) -> ProcedureCode:
    row = ctx.store.dossier(str(code))
    if row is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    return ProcedureCode(row.procedure)


def applicant_of(dossier: etree._Element) -> str:
    return dossier.findtext(f"{q('Applicant', DOSSIER_NS)}/{q('FullName', DOSSIER_NS)}") or ""


def _agency_name(ctx: NodeContext, code: AgencyCode) -> str:
    try:
        return ctx.rules.agency(code).name
    except ExchangeError:
        return str(code)


@dataclass(frozen=True)
class Late:
    """What the late agency says (``exchange done --late-reason --new-date``); None: the defaults."""

    reason: str | None = None
    new_date: dt.date | None = None


def parse_new_date(text: str | None, today: dt.date) -> dt.date | None:
    """``--new-date``: an ISO date, today or later."""
    if text is None:
        return None
    try:
        date = dt.date.fromisoformat(text)
    except ValueError:
        raise SlipError(f"--new-date {text!r}: expected a date as YYYY-MM-DD") from None
    if date < today:
        raise SlipError(f"--new-date {text}: the new date is in the past (today is {today.isoformat()})")
    return date


def late_step(ctx: NodeContext, code: DossierCode, step: str, at: dt.datetime, due: str, dossier: etree._Element,
              received_at: dt.datetime, late: Late | None) -> tuple[str, dt.date]:
    """In the transaction that records a late step done here: issue the apology slip for this
    agency's system; returns the apology and the new date, for the status sent to the origin."""
    late = late or Late()
    local = at.astimezone(ctx.rules.calendar.timezone).date()
    date = late.new_date or ctx.rules.calendar.add(local, 1)
    reason = (late.reason or "").strip() or DEFAULT_LATE_REASON
    issue(ctx, apology(ctx, code, dossier, received_at, step, date, reason, ctx.agency))
    text = (f"Xin lỗi: bước {step} quá hạn {dt.date.fromisoformat(due):%d/%m/%Y}. {reason} "
            f"Hẹn lại ngày trả kết quả: {date:%d/%m/%Y}.")
    return text, date


def on_status(ctx: NodeContext, code: DossierCode | None, sender: AgencyCode, status: etree._Element) -> None:
    """In the transaction that records a status at the origin: an apology in it becomes the
    apology slip for the desk."""
    late = status.find(q("Late", STATUS_NS))
    if code is None or late is None:
        return
    dossier = ctx.store.dossier_payload(str(code))
    row = ctx.store.dossier(str(code))
    if dossier is None or row is None or code.agency != ctx.agency:
        return
    step = status.findtext(q("Step", STATUS_NS)) or "?"
    date = dt.date.fromisoformat(late.findtext(q("NewDueDate", STATUS_NS)) or "")
    root = safexml.parse(dossier, source=f"stored dossier {code}")
    issue(ctx, apology(ctx, code, root, clock.parse(row.received_at), step, date,
                       late.findtext(q("Apology", STATUS_NS)), sender))


# Its two shapes ---------------------------------------------------------------------------

def to_xml(slip: Slip, tz: dt.tzinfo) -> bytes:
    """The slip as a small XML document: UTF-8 with a declaration, Vietnamese as itself."""
    root = etree.Element(q("Slip", SLIP_NS), nsmap={None: SLIP_NS}, kind=slip.kind)  # type: ignore[dict-item]
    for name, value in _fields(slip, tz):
        etree.SubElement(root, q(name, SLIP_NS)).text = value
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _fields(slip: Slip, tz: dt.tzinfo) -> list[tuple[str, str]]:
    fields = [("Title", slip.title), ("DossierCode", slip.dossier), ("ProcedureCode", slip.procedure),
              ("ProcedureName", slip.procedure_name), ("Applicant", slip.applicant),
              ("ReceivedAt", slip.received_at.astimezone(tz).isoformat(timespec="minutes")),
              ("Agency", slip.agency_name)]
    if slip.kind == "apology":
        fields += [("Step", slip.step or ""), ("Reason", slip.reason or ""), ("NewDueDate", slip.due.isoformat())]
    elif slip.kind == "supplement":
        fields += [("Step", slip.step or ""), ("Missing", slip.reason or ""), ("Paused", PAUSED_NOTE)]
    else:
        fields.append(("DueDate", slip.due.isoformat()))
    return fields


_LABELS = {"DossierCode": "Mã hồ sơ", "ProcedureCode": "Mã thủ tục", "ProcedureName": "Thủ tục",
           "Applicant": "Người nộp", "ReceivedAt": "Ngày tiếp nhận", "Agency": "Cơ quan",
           "Step": "Bước", "Reason": "Lý do", "NewDueDate": "Ngày hẹn trả kết quả mới",
           "DueDate": "Ngày hẹn trả kết quả", "Missing": "Nội dung yêu cầu bổ sung, hoàn thiện",
           "Paused": "Thời hạn giải quyết"}
_CSS = ("@page { size: A5; margin: 12mm; } body { font-family: 'Times New Roman', serif; max-width: 148mm; } "
        "h1 { font-size: 16pt; text-align: center; } table { width: 100%; border-collapse: collapse; } "
        "th, td { border: 1px solid #444; padding: 4px; text-align: left; vertical-align: top; }")


def to_html(slip: Slip, tz: dt.tzinfo) -> bytes:
    """The slip as one printable A5 page; its table has a header row."""
    rows = "".join(f"<tr><td>{html.escape(_LABELS[name])}</td><td>{html.escape(_shown(name, value, tz))}</td></tr>"
                   for name, value in _fields(slip, tz) if name in _LABELS)
    addressee = (f"<p>Kính gửi: Ông/Bà {html.escape(slip.applicant)}</p>"
                 if slip.kind in ("apology", "supplement") else "")
    page = (f'<!DOCTYPE html>\n<html lang="vi"><head><meta charset="utf-8"><title>{slip.title} {slip.dossier}'
            f"</title><style>{_CSS}</style></head><body><h1>{slip.title}</h1>{addressee}"
            f"<table><thead><tr><th>Mục</th><th>Nội dung</th></tr></thead><tbody>{rows}</tbody></table>"
            "</body></html>\n")
    return page.encode("utf-8")


def _shown(name: str, value: str, tz: dt.tzinfo) -> str:
    """Dates as people read them (dd/MM/yyyy, local time)."""
    if name in ("DueDate", "NewDueDate"):
        return f"{dt.date.fromisoformat(value):%d/%m/%Y}"
    if name == "ReceivedAt":
        return f"{dt.datetime.fromisoformat(value).astimezone(tz):%d/%m/%Y %H:%M}"
    return value


# Handing them over exactly once ----------------------------------------------------------

def folder(ctx: NodeContext) -> Path:
    return ctx.config.delivery_dir / FOLDER


COPY = "~"
"""Between a slip file's name and its pending copy's token."""


@dataclass(frozen=True)
class Prepared:
    """A slip's files written aside, durable, each under its copy's token, waiting for ``record``."""

    slip: Slip
    names: tuple[str, ...]
    copy: str


def prepare(ctx: NodeContext, slip: Slip) -> Prepared:
    """Write the slip's files aside (fsynced), outside any transaction if the caller wishes."""
    tz = ctx.rules.calendar.timezone
    pending = folder(ctx) / PENDING
    _private_dir(folder(ctx))
    _private_dir(pending)
    copy = secrets.token_hex(8)
    names = []
    for suffix, data in ((".xml", to_xml(slip, tz)), (".html", to_html(slip, tz))):
        name = slip.stem + suffix
        write_atomic(pending / f"{name}{COPY}{copy}", data, mode=PRIVATE_MODE)
        names.append(name)
    sync_dir(pending)  # the copies' names too, before their delivery can be recorded
    return Prepared(slip, tuple(names), copy)


def record(ctx: NodeContext, prepared: Prepared) -> list[str]:
    """In the caller's transaction: the delivery of the prepared copies; returns the file names."""
    ctx.record(*(_entry(ctx, prepared.slip, name, prepared.copy) for name in prepared.names))
    return list(prepared.names)


def issue(ctx: NodeContext, slip: Slip) -> list[str]:
    """In the caller's transaction: write the slip's files aside and record their delivery."""
    return record(ctx, prepare(ctx, slip))


def _entry(ctx: NodeContext, slip: Slip, name: str, copy: str) -> Entry:
    return ctx.entry(Event.DELIVERED, dossier=slip.dossier, procedure=slip.procedure, step=slip.step,
                     detail={"via": "slip", "slip": slip.kind, "file": f"{FOLDER}/{name}", "copy": copy})


def publish(ctx: NodeContext) -> int:
    """Rename into place every pending slip whose delivery committed; returns how many."""
    pending = folder(ctx) / PENDING
    if not pending.is_dir():
        return 0
    renamed = 0
    for path in sorted(pending.iterdir()):
        # The command that issued a slip and the running node's housekeeping both publish: the
        # one that comes second finds the pending file gone, which is the same result.
        name, _, copy = path.name.partition(COPY)
        try:
            if _committed(ctx, name, copy):
                path.replace(folder(ctx) / name)
                renamed += 1
            elif time.time() - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
        except FileNotFoundError:
            continue
    return renamed


def _committed(ctx: NodeContext, name: str, copy: str) -> bool:
    """Whether the delivery of this copy of ``name`` committed (a copy written before copies had
    tokens, ``copy`` empty, by its name alone)."""
    wanted = f"{FOLDER}/{name}"
    for _, data in ctx.audit.dossier_entries(_dossier_of(name)):
        _, entry = Entry.decode(data)
        if entry.event is Event.DELIVERED and entry.detail.get("file") == wanted \
                and entry.detail.get("copy", "") == copy:
            return True
    return False


def _dossier_of(name: str) -> str:
    """The dossier code in a slip's file name (a code is ``agency-yymmdd-nnnn``)."""
    stem = Path(name).stem
    for prefix in ("phieu-hen-", "phieu-xin-loi-", "phieu-yeu-cau-bo-sung-"):
        stem = stem.removeprefix(prefix)
    return "-".join(stem.split("-")[:3])


def _private_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)


def today(ctx: NodeContext) -> dt.date:
    return clock.now().astimezone(ctx.rules.calendar.timezone).date()
