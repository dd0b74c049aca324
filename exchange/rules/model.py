"""The routing engine: who does which step of which procedure, by when, and who may send what.

Pure: no I/O after loading (``rules_load`` builds a ``RuleSet`` from XML). Every route of every
procedure from every possible origin is resolved once at load, so a routing decision is a few
dictionary lookups and two bisections in the working calendar.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import RoutingError
from exchange.rules.calendar import WorkingCalendar

Pairs = frozenset[tuple[AgencyCode, AgencyCode]]
"""(sender, receiver) pairs."""


class Level(StrEnum):
    PROVINCE = "province"
    DISTRICT = "district"
    COMMUNE = "commune"


@dataclass(frozen=True, slots=True)
class Agency:
    code: AgencyCode
    name: str
    level: Level
    kind: str
    parent: AgencyCode | None


@dataclass(frozen=True, slots=True)
class Selector:
    """Who performs a step, relative to the origin: itself, a kind within an area, or a code."""

    origin: bool = False
    kind: str | None = None
    within: Level | None = None
    agency: AgencyCode | None = None

    def __str__(self) -> str:
        if self.origin:
            return "origin"
        if self.agency is not None:
            return f"agency {self.agency}"
        return f"{self.kind} within the origin's {self.within}" if self.within else f"the {self.kind}"


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    action: str
    by: Selector
    budget: int
    after: tuple[str, ...] = ()
    paused: bool = False
    """The applicant holds the dossier (payment); its time does not count against the budget."""


@dataclass(frozen=True, slots=True)
class Procedure:
    code: ProcedureCode
    name: str
    scope: str
    budget: int
    origins: tuple[str, ...]
    steps: tuple[Step, ...]
    """In an order where every step comes after its prerequisites."""
    requires: tuple[tuple[Step, frozenset[str]], ...] = field(init=False, repr=False, compare=False)
    """Each step with its prerequisites as a set, for the hot path of ``next_steps``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "requires", tuple((s, frozenset(s.after)) for s in self.steps))

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise RoutingError(f"procedure {self.code} has no step {step_id!r} "
                           f"(steps: {', '.join(s.id for s in self.steps)})")

    @property
    def final(self) -> Step:
        return self.steps[-1]


@dataclass(frozen=True, slots=True)
class NextStep:
    """A step that may start now: who performs it and by when."""

    step: Step
    agency: AgencyCode
    due: dt.date | None
    """None while the step waits on the applicant (its clock is paused)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to an authorization question: allowed, or refused with the reason."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class RuleSet:
    """A whole, checked rule set. Build it with ``rules_load.load``; never half-built."""

    agencies: Mapping[AgencyCode, Agency]
    calendar: WorkingCalendar
    procedures: Mapping[ProcedureCode, Procedure]
    digest: str
    """SHA-256 of the canonical form: the audit log records it at every load."""
    routes: Mapping[tuple[ProcedureCode, AgencyCode], Mapping[str, AgencyCode]] = field(repr=False)
    """Resolved performer of every step, per procedure and origin."""
    senders: Mapping[tuple[ProcedureCode, str], Mapping[AgencyCode, Pairs]] = field(repr=False)
    """Per procedure and step: per origin, the (sender, receiver) pairs a transfer may take."""

    @property
    def step_count(self) -> int:
        return sum(len(p.steps) for p in self.procedures.values())

    def procedure(self, code: ProcedureCode) -> Procedure:
        try:
            return self.procedures[code]
        except KeyError:
            raise RoutingError(f"no routing rules for procedure {code}") from None

    def agency(self, code: AgencyCode) -> Agency:
        try:
            return self.agencies[code]
        except KeyError:
            raise RoutingError(f"agency {code} is not in the directory") from None

    def route(self, procedure: ProcedureCode, origin: AgencyCode) -> Mapping[str, AgencyCode]:
        """The agency performing each step when the dossier was received at ``origin``."""
        route = self.routes.get((procedure, origin))
        if route is None:
            proc = self.procedure(procedure)
            raise RoutingError(f"procedure {procedure} is not received at {origin}; it is received "
                               f"by agencies of kind {', '.join(proc.origins)}")
        return route

    def next_steps(self, procedure: ProcedureCode, origin: AgencyCode, received_at: dt.datetime,
                   done: Mapping[str, dt.datetime]) -> list[NextStep]:
        """Steps whose prerequisites are all done and that are not done themselves, with due dates.

        A step counts from when its last prerequisite was done (from receipt for the first).
        """
        proc = self.procedure(procedure)
        route = self.route(procedure, origin)
        unknown = done.keys() - route.keys()
        if unknown:
            raise RoutingError(f"procedure {procedure} has no step {sorted(unknown)[0]!r}")
        ready = []
        finished = done.keys()
        for step, requires in proc.requires:
            if step.id in done or not requires <= finished:
                continue
            start = max((done[p] for p in step.after), default=received_at)
            due = None if step.paused else self.calendar.due(start, step.budget)
            ready.append(NextStep(step, route[step.id], due))
        return ready

    def due_date(self, procedure: ProcedureCode, received_at: dt.datetime) -> dt.date:
        """When the whole procedure is due, for a dossier received at ``received_at``."""
        return self.calendar.due(received_at, self.procedure(procedure).budget)

    def plan(self, procedure: ProcedureCode, origin: AgencyCode,
             received_at: dt.datetime) -> list[NextStep]:
        """Every step with its performer and its due date if each step ends on its due date.

        Paused steps are taken to end on the day they start (the applicant pays at once).
        """
        proc = self.procedure(procedure)
        route = self.route(procedure, origin)
        first = self.calendar.first_counted_day(received_at)
        ends: dict[str, dt.date] = {}
        plan = []
        for step in proc.steps:
            start = max((ends[p] for p in step.after), default=first)
            ends[step.id] = start if step.paused else self.calendar.add(start, step.budget)
            plan.append(NextStep(step, route[step.id], None if step.paused else ends[step.id]))
        return plan

    def authorize(self, sender: AgencyCode, receiver: AgencyCode, procedure: ProcedureCode,
                  step: str, origin: AgencyCode | None = None) -> Decision:
        """May ``sender`` hand ``receiver`` a dossier for ``step``? Narrowed to one origin if given.

        A step's dossier comes from the performer of one of its prerequisites and goes to its
        own performer.
        """
        proc = self.procedures.get(procedure)
        if proc is None:
            return Decision(False, f"no routing rules for procedure {procedure}")
        per_origin = self.senders.get((procedure, step))
        if per_origin is None:
            return Decision(False, f"procedure {procedure} has no step {step!r}")
        if origin is not None:
            pairs = per_origin.get(origin)
            if pairs is None:
                return Decision(False, f"procedure {procedure} is not received at {origin}")
        else:
            pairs = frozenset().union(*per_origin.values())
        if (sender, receiver) in pairs:
            return Decision(True, f"{sender} → {receiver} for step {step!r} of {procedure}")
        return Decision(False, _refusal(proc, step, sender, receiver, pairs))


def _refusal(proc: Procedure, step: str, sender: AgencyCode, receiver: AgencyCode,
             pairs: Pairs) -> str:
    if not proc.step(step).after:
        return f"step {step!r} of {proc.code} is the first step: the desk receives it, nobody hands it over"
    receivers = sorted({str(r) for _, r in pairs})
    if str(receiver) not in receivers:
        return (f"step {step!r} of {proc.code} is performed by {' or '.join(receivers) or 'nobody'}, "
                f"not {receiver}")
    senders = sorted({str(s) for s, r in pairs if r == receiver})
    return (f"{sender} does not perform a step before {step!r} of {proc.code}; "
            f"it may come from {' or '.join(senders)}")
