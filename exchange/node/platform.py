"""The national document-exchange platform's side of a node: edXML packages in and out.

Out: a dossier held here as a package for another agency, and its status as a status package
whose code comes from the dossier's state (or the last status a peer or the platform reported).
In: a document-management system's package becomes a new dossier, its procedure named by the
operator or by the administrator's mapping file beside the rules (``edxml-procedures.toml``);
a status package from the platform is recorded against the dossier it answers, and a take-back
the platform accepted (15) withdraws the dossier at its origin.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from exchange import clock
from exchange.adapters import edxml
from exchange.audit.entries import Event
from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.envelope.messages import DossierStatus, ExchangeStatus
from exchange.errors import ConfigError, InvalidCode, InvalidDossier, RoutingError, UnknownDossier
from exchange.node.context import NodeContext
from exchange.node.status import NATIONAL_STATUS
from exchange.node.workflow import end_dossier, procedure_of, submit
from exchange.rules.model import Agency, Level
from exchange.store.node import DossierRow, StatusRow
from exchange.store.states import DossierState
from exchange.xml import safexml

MAPPING_FILE = "edxml-procedures.toml"
"""The administrator's mapping of packages to procedures, in the rules directory (not ``*.xml``:
the rules loader reads every ``*.xml`` there as rules)."""

TAKE_BACK_REQUESTED, TAKE_BACK_ACCEPTED, TAKE_BACK_REFUSED = "13", "15", "16"
STATE_TO_STATUS: dict[DossierState, str] = {
    DossierState.PROCESSING: ExchangeStatus.PROCESSING.value,
    DossierState.PAUSED: ExchangeStatus.PROCESSING.value,
    DossierState.SUPPLEMENT_REQUESTED: ExchangeStatus.PROCESSING.value,
    DossierState.COMPLETED: ExchangeStatus.DONE.value,
    DossierState.REFUSED: ExchangeStatus.REFUSED.value,
    DossierState.WITHDRAWN: TAKE_BACK_ACCEPTED,
}
"""The edXML status code of every state a dossier can be in here. Paused (a fee) and
supplement-requested are 05: the receiver is still processing and asked the applicant for
something. A withdrawal is the take-back done: 15. While a dossier is still processing, the last
status a peer or the platform reported says more (01, 03, 04, 05, 13 a take-back requested, 16 a
take-back refused); a final state always wins."""

PORTAL_OF_STATUS: dict[str, DossierStatus] = {
    "01": DossierStatus.REGISTERED, "02": DossierStatus.NOT_ACCEPTED, "03": DossierStatus.ACCEPTED,
    "04": DossierStatus.PROCESSING, "05": DossierStatus.PROCESSING, "06": DossierStatus.PROCESSED,
    TAKE_BACK_ACCEPTED: DossierStatus.WITHDRAWN,
}
"""The portal's code (TrangThaiHoSo) a platform status implies; 13 and 16 leave the dossier's own."""


# Agencies as packages name them ----------------------------------------------------------

def organ(ctx: NodeContext, code: str) -> edxml.Organ:
    """An agency with its Vietnamese name and the body in charge of it, from the rules (looked up
    by ``AgencyCode``; an agency the rules do not know is named by its code)."""
    agency = _agency(ctx, code)
    if agency is None:
        return edxml.Organ(code, code)
    parent = _agency(ctx, str(agency.parent)) if agency.parent else None
    return edxml.Organ(code, agency.name, parent.name if parent else agency.name)


def _agency(ctx: NodeContext, code: str) -> Agency | None:
    try:
        return ctx.rules.agencies.get(AgencyCode(code))
    except InvalidCode:
        return None


COMMITTEE = "Ủy ban nhân dân "


def place(ctx: NodeContext, code: str) -> str:
    """Where an agency promulgates: its commune or, above communes, its province ("xã Dực Yên",
    "tỉnh Quảng Ninh"), read from the committee's name; the agency's own code when unknown."""
    agency = _agency(ctx, code)
    while agency is not None and agency.level is Level.DISTRICT and agency.parent is not None:
        agency = _agency(ctx, str(agency.parent))
    level = agency.level if agency is not None else None
    while agency is not None and not agency.name.startswith(COMMITTEE) and agency.parent is not None:
        parent = _agency(ctx, str(agency.parent))
        if parent is None or parent.level is not level:
            break
        agency = parent
    if agency is None:
        return code
    return agency.name.removeprefix(COMMITTEE).strip()


# Out ------------------------------------------------------------------------------------

def export_stored(ctx: NodeContext, code: str, to: AgencyCode) -> bytes:
    """A dossier held at this node as an edXML package for ``to``."""
    row, payload = ctx.store.dossier(code), ctx.store.dossier_payload(code)
    if row is None or not payload:
        raise UnknownDossier(f"this node knows no dossier {code}")
    dossier = safexml.parse(payload, source=f"dossier {code}")
    try:
        subject = ctx.rules.procedure(ProcedureCode(row.procedure)).name
    except RoutingError:
        subject = dossier.findtext(f"{{{etree.QName(dossier).namespace}}}ProcedureName") or row.procedure
    here = str(ctx.agency)
    return edxml.export_transfer(dossier, organ(ctx, here), organ(ctx, str(to)), subject, place=place(ctx, here),
                                 at=clock.now())


def status_of(ctx: NodeContext, row: DossierRow) -> tuple[str, str]:
    """The edXML status code of a dossier held here, and what it says."""
    statuses = ctx.store.statuses(row.code)
    last = statuses[-1] if statuses else None
    if last is not None and not row.state.final:
        status, note = last.exchange_status, last.note or edxml.STATUS_CODES.get(last.exchange_status, "")
    else:
        status = STATE_TO_STATUS[row.state]
        note = f"{edxml.STATUS_CODES[status]}: hồ sơ {row.state}"
    return status, f"{note} (TrangThaiHoSo {int(NATIONAL_STATUS[row.state])})"


def export_stored_status(ctx: NodeContext, code: str) -> tuple[str, bytes]:
    """The edXML status code of a dossier held here, and its status package."""
    row = ctx.store.dossier(code)
    if row is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    status, note = status_of(ctx, row)
    dossier = DossierCode(row.code)
    number, notation = edxml.dossier_notation(dossier)
    received = clock.parse(row.received_at)
    here = str(ctx.agency)
    package = edxml.StatusPackage(
        organ=str(dossier.agency), code=f"{number}/{notation}", promulgated=edxml.local_date(received),
        document_id=edxml.dossier_document_id(dossier, received), sender=organ(ctx, here), status_code=status,
        description=note, at=clock.now(), department=organ(ctx, here).name, staff="exchange node")
    return status, edxml.write_status(package)


# In: a package as a new dossier -------------------------------------------------------------

@dataclass(frozen=True)
class Mapping:
    """``edxml-procedures.toml``: ``[types]`` maps a ``DocumentType/Type`` to a procedure code;
    each ``[[subjects]]`` (``contains``, ``procedure``) maps a subject holding those words, the
    first that matches winning."""

    types: dict[str, str]
    subjects: list[tuple[str, str]]

    @classmethod
    def load(cls, path: Path) -> Mapping:
        if not path.exists():
            return cls({}, [])
        try:
            raw = tomllib.loads(path.read_text("utf-8"))
            types = {str(k): str(v) for k, v in raw.get("types", {}).items()}
            subjects = [(str(s["contains"]), str(s["procedure"])) for s in raw.get("subjects", [])]
        except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a procedure mapping ({exc}); expected [types] \"TYPE\" = \"CODE\" "
                              "and [[subjects]] with contains and procedure") from None
        return cls(types, subjects)

    def procedure(self, package: edxml.Package) -> tuple[str, str] | None:
        """The procedure code the mapping gives a package, and why."""
        if package.type_code in self.types:
            return self.types[package.type_code], f"DocumentType/Type {package.type_code}"
        subject = package.subject.casefold()
        for words, code in self.subjects:
            if words.casefold() in subject:
                return code, f"Subject contains {words!r}"
        return None


def procedure_for(ctx: NodeContext, package: edxml.Package, given: ProcedureCode | None, source: str,
                  at: dt.datetime) -> ProcedureCode:
    """The procedure a package's dossier follows: ``given``, or the mapping's; in force at ``at``."""
    mapping_path = ctx.config.rules / MAPPING_FILE
    if given is not None:
        code, why = str(given), "--procedure"
    else:
        found = Mapping.load(mapping_path).procedure(package)
        if found is None:
            raise InvalidDossier(
                f"{source}: no procedure for this package: give --procedure CODE, or map its DocumentType/Type "
                f"{package.type_code!r} or words of its Subject {package.subject!r} in {mapping_path}")
        code, why = found
    try:
        procedure = ProcedureCode(code)
        ctx.rules.procedure(procedure, at)
    except (InvalidCode, RoutingError) as exc:
        raise InvalidDossier(f"{source}: procedure {code} (from {why}): {exc}") from None
    return procedure


def submit_package(ctx: NodeContext, package: edxml.Package, source: str,
                   procedure: ProcedureCode | None = None) -> DossierCode:
    """Submit a package as a new dossier received at this node now; its code is the day's next."""
    _check_addressed_here(ctx, package, source)
    carried = edxml.carried_dossier(package, source)
    if carried is not None:
        return submit(ctx, etree.tostring(carried[0], encoding="UTF-8"), source)
    at = clock.now().replace(microsecond=0)
    code = procedure_for(ctx, package, procedure, source, at)
    intake = edxml.Intake(_next_code(ctx, at), code, ctx.rules.procedure(code, at).name, at,
                          ctx.rules.due_date(code, at))
    dossier = edxml.package_dossier(package, intake)
    return submit(ctx, etree.tostring(dossier, encoding="UTF-8", xml_declaration=True), source)


def _check_addressed_here(ctx: NodeContext, package: edxml.Package, source: str) -> None:
    here = str(ctx.agency)
    if all(r.code != here for r in package.recipients):
        names = ", ".join(f"{r.code} ({r.name})" for r in package.recipients)
        raise InvalidDossier(f"{source}: MessageHeader/To names {names}, not this node's agency {here}")


def _next_code(ctx: NodeContext, at: dt.datetime) -> DossierCode:
    day = ctx.rules.calendar.local(at).date()
    prefix = str(DossierCode.build(ctx.agency, day, 1)).rsplit("-", 1)[0] + "-"
    used = [DossierCode(r.code).sequence for r in ctx.store.dossiers() if r.code.startswith(prefix)]
    return DossierCode.build(ctx.agency, day, max(used, default=0) + 1)


# In: the platform's status packages ---------------------------------------------------------

def take_status(ctx: NodeContext, status: edxml.StatusPackage, source: str) -> tuple[DossierCode, str]:
    """Record a status package against the dossier it answers; a take-back accepted (15) at the
    dossier's origin withdraws it. Returns the dossier and what changed."""
    code = _answered(ctx, status, source)
    at = status.at.astimezone(dt.UTC)
    with ctx.store.transaction():
        row = ctx.store.dossier(str(code))
        assert row is not None  # _answered found it
        portal = PORTAL_OF_STATUS.get(status.status_code, NATIONAL_STATUS[row.state])
        ctx.store.add_status(StatusRow(str(code), status.sender.code, None, status.status_code, int(portal),
                                       clock.utc(at), status.description or None))
        ctx.record(ctx.entry(Event.STATUS_RECEIVED, dossier=str(code), procedure=row.procedure, time=at,
                             counterpart=status.sender.code,
                             detail={"status": status.status_code, "via": "edxml",
                                     **({"description": status.description[:300]} if status.description else {})}))
        if status.status_code == TAKE_BACK_ACCEPTED and code.agency == ctx.agency and not row.state.final:
            first = procedure_of(ctx, code).steps[0].id
            end_dossier(ctx, code, DossierState.WITHDRAWN, first, at,
                        status.description or f"take-back accepted by {status.sender.code}")
            return code, "withdrawn"
    return code, f"status {status.status_code} recorded"


def _answered(ctx: NodeContext, status: edxml.StatusPackage, source: str) -> DossierCode:
    """The dossier held here whose ``DocumentId`` the status answers."""
    parts = status.document_id.split(",", 2)
    candidates = []
    if len(parts) == 3 and "/" in parts[2]:
        number, notation = parts[2].split("/", 1)
        candidates.append(notation)
        try:
            day = dt.datetime.strptime(parts[1], edxml.DATE).date()
            candidates.append(str(DossierCode.build(AgencyCode(parts[0]), day, int(number))))
        except (ValueError, InvalidCode):
            pass
    for candidate in candidates:
        try:
            code = DossierCode(candidate)
        except InvalidCode:
            continue
        row = ctx.store.dossier(str(code))
        if row is None:
            continue
        expected = edxml.dossier_document_id(code, clock.parse(row.received_at))
        if status.document_id != expected:
            raise InvalidDossier(f"{source}: ResponseFor/DocumentId is {status.document_id!r}, but dossier {code} "
                                 f"is {expected!r}")
        return code
    raise UnknownDossier(f"{source}: ResponseFor/DocumentId {status.document_id!r} names no dossier this node "
                         "holds (expected organ,yyyy/MM/dd,number/dossier code as this node exports)")
