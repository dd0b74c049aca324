"""A reorganisation reaching the dossiers in flight (``exchange rules migrate``).

A dossier keeps the procedure and deadlines it was received under. What changes is who performs
the steps not yet done when their agency is abolished: its successor for the dossier's origin.
Hand-offs re-route on their own as they happen (``workflow.performer``); this module does the
rest at a chosen moment, and lists it first with ``dry_run``: a step ready or waiting at this node
whose own agency is abolished is handed over to the successor (a signed transfer, authorized
there as a take-over), and every other step not yet done whose agency is abolished is reassigned
here, so that ``status`` names who will do it. Each change is audited as ``re-routed``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lxml import etree

from exchange.audit.entries import Event
from exchange.codes import AgencyCode, DossierCode
from exchange.envelope.model import Header, Hop, Kind
from exchange.node.context import NodeContext
from exchange.node.workflow import enqueue, payload_of, procedure_of, with_control_row
from exchange.store.states import StepState

HANDED_OVER = "handed over"
REASSIGNED = "reassigned"


@dataclass(frozen=True)
class Move:
    """One step of one dossier going from an abolished agency to its successor."""

    dossier: str
    step: str
    planned: AgencyCode
    successor: AgencyCode
    action: str
    """``handed over`` (this node held it ready: the dossier goes to the successor) or ``reassigned``."""

    def describe(self, ctx: NodeContext, done: bool) -> str:
        verb = self.action if done else f"would be {self.action}"
        return (f"{self.dossier} step {self.step}: {self.planned} ({_name(ctx, self.planned)}) → "
                f"{self.successor} ({_name(ctx, self.successor)}), {verb}")


def plan(ctx: NodeContext, at: dt.datetime) -> list[Move]:
    """Every step of an open dossier here whose agency is not in force at ``at``, with its successor."""
    moves = []
    for row in ctx.store.dossiers():
        if row.state.final:
            continue
        code = DossierCode(row.code)
        for step in ctx.store.steps(row.code):
            if step.state in (StepState.DONE, StepState.CANCELLED, StepState.SENT, StepState.RECEIVED):
                continue
            planned = AgencyCode(step.agency)
            successor = ctx.rules.successor(planned, at, code.agency)
            if successor == planned:
                continue
            here = planned == ctx.agency and step.state in (StepState.READY, StepState.WAITING)
            moves.append(Move(row.code, step.step, planned, successor, HANDED_OVER if here else REASSIGNED))
    return moves


def apply(ctx: NodeContext, moves: list[Move], at: dt.datetime) -> None:
    """Carry the moves out, each dossier's in one transaction with its audit entries."""
    for move in moves:
        with ctx.store.transaction():
            code = DossierCode(move.dossier)
            ctx.store.reassign(move.dossier, move.step, str(move.successor))
            ctx.record(ctx.entry(Event.REROUTED, dossier=move.dossier, procedure=str(procedure_of(ctx, code).code),
                                 step=move.step, counterpart=str(move.successor), time=at,
                                 detail={"from": str(move.planned), "to": str(move.successor), "how": move.action}))
            if move.action == HANDED_OVER:
                _hand_over(ctx, code, move, at)


def _hand_over(ctx: NodeContext, code: DossierCode, move: Move, at: dt.datetime) -> None:
    payload: etree._Element = with_control_row(payload_of(ctx, code), at, ctx.agency, move.successor,
                                                f"{ctx.agency} abolished: step {move.step} handed over")
    header = Header(kind=Kind.TRANSFER, sender=ctx.agency, recipient=move.successor, dossier=code,
                    procedure=procedure_of(ctx, code).code, step=move.step, created=at, trace=(Hop(ctx.agency, at),))
    enqueue(ctx, header, payload, Event.SEALED, {"handed_over": move.step})
    ctx.store.hand_over(move.dossier, move.step, StepState.SENT)


def abolished(ctx: NodeContext, at: dt.datetime) -> str | None:
    """Why this node takes no new work at ``at`` (its agency is abolished), or None."""
    agency = ctx.rules.abolished(ctx.agency, at)
    if agency is None:
        return None
    heirs = ", ".join(f"{s.agency}" + (f" (for {s.for_})" if s.for_ else "") for s in agency.successors)
    return f"{ctx.agency} ({agency.name}) ended on {agency.end}; its work goes to {heirs or 'no successor'}"


def _name(ctx: NodeContext, code: AgencyCode) -> str:
    agency = ctx.rules.agencies.get(code)
    return agency.name if agency else "not in the directory"

