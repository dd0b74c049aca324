"""What a node tells about its dossiers: each one's steps with due dates and overdue marks, its
timeline, and the overdue list. The command line and the HTTP API show the same answers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from exchange.errors import UnknownDossier
from exchange.node.context import NodeContext
from exchange.store.node import DossierRow, StepRow
from exchange.store.states import StepState


def today(ctx: NodeContext) -> str:
    """Today's date where the rules count working days (ISO text, as due dates are stored)."""
    return dt.datetime.now(ctx.rules.calendar.timezone).date().isoformat()


def status_rows(ctx: NodeContext, dossier: str | None = None) -> list[dict[str, Any]]:
    """Each dossier at this node (or the one named) with its steps and what waits here."""
    late = _overdue(ctx)
    result = []
    for row in ctx.store.dossiers(code=dossier):
        steps = ctx.store.steps(row.code)
        result.append({"code": row.code, "procedure": row.procedure, "state": row.state.value,
                       "pending_here": [s.step for s in steps
                                        if s.agency == str(ctx.agency) and s.state is StepState.READY],
                       "steps": [_step(s, late) for s in steps]})
    return result


def timeline(ctx: NodeContext, code: str) -> dict[str, Any]:
    """A dossier's steps and the statuses peers sent about it; UnknownDossier if it is not here."""
    row = ctx.store.dossier(code)
    if row is None:
        raise UnknownDossier(f"this node knows no dossier {code}")
    late = _overdue(ctx)
    return {"code": row.code, "procedure": row.procedure, "origin": row.origin, "state": row.state.value,
            "steps": [{**_step(s, late), "result": s.result} for s in ctx.store.steps(code)],
            "statuses": [{"sender": s.sender, "step": s.step, "exchange_status": s.exchange_status,
                          "dossier_status": s.dossier_status, "at": s.at, "note": s.note}
                         for s in ctx.store.statuses(code)]}


def dossier_list(ctx: NodeContext, *, overdue_only: bool = False) -> list[dict[str, Any]]:
    """The dossiers at this node with the step waiting here, if any; or only the overdue ones."""
    waiting = {s.dossier: s for s in ctx.store.ready_steps(str(ctx.agency))}
    overdue = {dossier for dossier, _ in _overdue(ctx, str(ctx.agency))}
    rows = ctx.store.dossiers()
    return [_listed(row, waiting.get(row.code), row.code in overdue) for row in rows
            if not overdue_only or row.code in overdue]


def _listed(row: DossierRow, step: StepRow | None, overdue: bool) -> dict[str, Any]:
    return {"code": row.code, "procedure": row.procedure, "state": row.state.value,
            "pending_step": step.step if step else None, "due": step.due if step else None, "overdue": overdue}


def _overdue(ctx: NodeContext, agency: str | None = None) -> set[tuple[str, str]]:
    """(dossier, step) of every overdue step here, or of ``agency``'s only."""
    return {(s.dossier, s.step) for s in ctx.store.overdue_steps(today(ctx)) if agency in (None, s.agency)}


def _step(step: StepRow, late: set[tuple[str, str]]) -> dict[str, Any]:
    return {"step": step.step, "agency": step.agency, "state": step.state.value, "due": step.due,
            "done_at": step.done_at, "overdue": (step.dossier, step.step) in late}
