"""What a node tells about its dossiers: one document per dossier, the same for
``exchange status --json`` and the HTTP API (``GET /dossiers``, ``GET /dossiers/CODE``).

Each document holds the dossier's state and its national portal status code, the date the whole
procedure is due and whether it is on time, each step known here with its agency (code and
name), state, due date (stored, or computed from the rules once its prerequisites are done),
done time and overdue mark, what waits at this node, and a timeline of what this node recorded
about the dossier. Times stay ISO 8601 (UTC) in the document; ``local`` renders them for people.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from exchange import clock
from exchange.audit.entries import Entry
from exchange.codes import AgencyCode, ProcedureCode
from exchange.envelope.messages import DossierStatus
from exchange.errors import RoutingError, UnknownDossier
from exchange.node.context import NodeContext
from exchange.store.node import DossierRow, StepRow
from exchange.store.states import DossierState, StepState

NATIONAL_STATUS: dict[DossierState, DossierStatus] = {
    DossierState.PROCESSING: DossierStatus.PROCESSING,
    DossierState.PAUSED: DossierStatus.FINANCIAL_OBLIGATION,
    DossierState.SUPPLEMENT_REQUESTED: DossierStatus.SUPPLEMENT_REQUESTED,
    DossierState.COMPLETED: DossierStatus.RESULT_RETURNED,
    DossierState.REFUSED: DossierStatus.NOT_ACCEPTED,
    DossierState.WITHDRAWN: DossierStatus.WITHDRAWN,
}
"""The national public-service portal's status code (TrangThaiHoSo, 1-10) of each state."""


def today(ctx: NodeContext) -> str:
    """Today's date where the rules count working days (ISO text, as due dates are stored)."""
    return dt.datetime.now(ctx.rules.calendar.timezone).date().isoformat()


def local(ctx: NodeContext, moment: str | None) -> str:
    """An ISO time as people read it here: local (+07:00), ``dd/MM/yyyy HH:mm``; an ISO date as
    ``dd/MM/yyyy``; ``-`` for none."""
    if not moment:
        return "-"
    if len(moment) == 10:
        return dt.date.fromisoformat(moment).strftime("%d/%m/%Y")
    return clock.parse(moment).astimezone(ctx.rules.calendar.timezone).strftime("%d/%m/%Y %H:%M")


def view(ctx: NodeContext, code: str | None = None, *, overdue_only: bool = False) -> list[dict[str, Any]]:
    """The document of every dossier at this node, or of the one named (UnknownDossier if it is not
    here), or of those with a step overdue at this node."""
    rows = ctx.store.dossiers(code=code)
    if code is not None and not rows:
        raise UnknownDossier(f"this node knows no dossier {code}")
    late = _overdue(ctx)
    documents = [_document(ctx, row, late) for row in rows]
    if overdue_only:
        mine = str(ctx.agency)
        documents = [d for d in documents if any(s["overdue"] and s["agency"] == mine for s in d["steps"])]
    return documents


def _document(ctx: NodeContext, row: DossierRow, late: set[tuple[str, str]]) -> dict[str, Any]:
    steps = ctx.store.steps(row.code)
    due = dossier_due(ctx, row)
    finished = max((s.done_at for s in steps if s.done_at), default=None) if row.state.final else None
    on_time = None if due is None else (_day(ctx, finished) if finished else today(ctx)) <= due
    upcoming = _upcoming(ctx, row, steps)
    return {
        "code": row.code, "procedure": row.procedure, "procedure_name": _procedure_name(ctx, row.procedure),
        "origin": row.origin, "received_at": row.received_at, "state": row.state.value,
        "paused_days": paused_days(ctx, row, dt.date.fromisoformat(today(ctx))),
        "national_status": int(NATIONAL_STATUS[row.state]), "due": due, "on_time": on_time,
        "pending_here": [s.step for s in steps if s.agency == str(ctx.agency) and s.state is StepState.READY],
        "steps": [_step(ctx, s, late, upcoming) for s in steps],
        "timeline": _timeline(ctx, row.code),
    }


def _step(ctx: NodeContext, step: StepRow, late: set[tuple[str, str]],
          upcoming: dict[str, dt.date | None]) -> dict[str, Any]:
    due = step.due
    if due is None and upcoming.get(step.step) is not None:
        due = upcoming[step.step].isoformat()  # type: ignore[union-attr]
    return {"step": step.step, "agency": step.agency, "agency_name": _agency_name(ctx, step.agency),
            "state": step.state.value, "due": due, "done_at": step.done_at, "result": step.result,
            "overdue": (step.dossier, step.step) in late}


def _timeline(ctx: NodeContext, code: str) -> list[dict[str, Any]]:
    """What this node recorded about the dossier, in order: its audit entries."""
    events = []
    for _, data in ctx.audit.dossier_entries(code):
        entry = Entry.decode(data)[1]
        events.append({"at": clock.utc(entry.time), "event": entry.event.value, "step": entry.step,
                       "counterpart": entry.counterpart, **({"detail": dict(entry.detail)} if entry.detail else {})})
    return events


def paused_days(ctx: NodeContext, row: DossierRow, today: dt.date) -> int:
    """The working days a dossier's clock stood still, counting a pause still running up to ``today``."""
    if row.paused_since is None:
        return row.paused_days
    calendar = ctx.rules.calendar
    since = calendar.local(clock.parse(row.paused_since)).date()
    return row.paused_days + max(0, calendar.working_days_between(since, today))


def dossier_due(ctx: NodeContext, row: DossierRow) -> str | None:
    """The date the whole procedure is due, moved by the days its clock stood still."""
    try:
        due = ctx.rules.due_date(ProcedureCode(row.procedure), clock.parse(row.received_at))
        today = dt.datetime.now(ctx.rules.calendar.timezone).date()
        return ctx.rules.calendar.add(due, paused_days(ctx, row, today)).isoformat()
    except RoutingError:  # a procedure the rules in force no longer hold
        return None


def _upcoming(ctx: NodeContext, row: DossierRow, steps: list[StepRow]) -> dict[str, dt.date | None]:
    """Due dates the rules give the steps whose prerequisites are done, wherever they are done."""
    done = {s.step: clock.parse(s.done_at) for s in steps if s.state is StepState.DONE and s.done_at}
    try:
        ready = ctx.rules.next_steps(ProcedureCode(row.procedure), AgencyCode(row.origin),
                                     clock.parse(row.received_at), done)
    except RoutingError:
        return {}
    return {item.step.id: item.due for item in ready}


def _day(ctx: NodeContext, moment: str) -> str:
    return clock.parse(moment).astimezone(ctx.rules.calendar.timezone).date().isoformat()


def _agency_name(ctx: NodeContext, code: str) -> str | None:
    agency = ctx.rules.agencies.get(AgencyCode(code))
    return agency.name if agency else None


def _procedure_name(ctx: NodeContext, code: str) -> str | None:
    procedure = ctx.rules.procedures.get(ProcedureCode(code))
    return procedure.name if procedure else None


def _overdue(ctx: NodeContext) -> set[tuple[str, str]]:
    """(dossier, step) of every overdue step here: the one query behind every overdue mark."""
    return {(s.dossier, s.step) for s in ctx.store.overdue_steps(today(ctx))}
