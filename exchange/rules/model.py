"""The routing engine: who does which step of which procedure, by when, and who may send what.

Pure: no I/O after loading (``rules_load`` builds a ``RuleSet`` from XML). Every route of every
procedure from every possible origin is resolved once at load, so a routing decision is a few
dictionary lookups and two bisections in the working calendar.

Time is part of the rules: agencies and procedure versions are in force from one day to another
(both inclusive, local dates), and an abolished agency names its successors. The days on which
anything starts or ends cut time into epochs; within one epoch the directory and the procedures
in force do not change, so routes are resolved once per epoch, and a question "at" a moment is
answered by the epoch holding that moment's local date. A question without a moment is answered
by the last epoch: the rules as they stand once every dated change has happened.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import RoutingError
from exchange.rules.calendar import Cutoff, WorkingCalendar

Pairs = frozenset[tuple[AgencyCode, AgencyCode]]
"""(sender, receiver) pairs."""


class Level(StrEnum):
    PROVINCE = "province"
    DISTRICT = "district"
    COMMUNE = "commune"


@dataclass(frozen=True, slots=True)
class Successor:
    """Who takes over an abolished agency's work: all of it, or (``for_``) that of dossiers
    received at one agency or under it."""

    agency: AgencyCode
    for_: AgencyCode | None = None


@dataclass(frozen=True, slots=True)
class Agency:
    code: AgencyCode
    name: str
    level: Level
    kind: str
    parent: AgencyCode | None
    start: dt.date | None = None
    """The first day it exists (None: since always)."""
    end: dt.date | None = None
    """The last day it exists (None: until further notice)."""
    successors: tuple[Successor, ...] = ()

    def in_force(self, day: dt.date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)


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
    """One version of a procedure: its route and deadlines while it is in force."""

    code: ProcedureCode
    name: str
    scope: str
    budget: int
    origins: tuple[str, ...]
    steps: tuple[Step, ...]
    """In an order where every step comes after its prerequisites."""
    start: dt.date | None = None
    end: dt.date | None = None
    cutoff: Cutoff = "calendar"
    """Received at or after this local time, a dossier counts from the next working day."""
    replaced_by: tuple[ProcedureCode, ...] = ()
    source: str | None = None
    """The legal act the route and deadlines come from."""
    requires: tuple[tuple[Step, frozenset[str]], ...] = field(init=False, repr=False, compare=False)
    """Each step with its prerequisites as a set, for the hot path of ``next_steps``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "requires", tuple((s, frozenset(s.after)) for s in self.steps))

    def in_force(self, day: dt.date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)

    @property
    def span(self) -> str:
        """Its days in force, as people read them."""
        if self.start is None and self.end is None:
            return "in force"
        return f"in force {self.start or 'always'} – {self.end or 'until further notice'}"

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
    """Every agency that exists or existed, whatever the day."""
    calendar: WorkingCalendar
    procedures: Mapping[ProcedureCode, Procedure]
    """The latest version of each procedure (for names; ask ``procedure(code, at)`` for the one in force)."""
    digest: str
    """SHA-256 of the canonical form: the audit log records it at every load."""
    routes: Mapping[tuple[ProcedureCode, AgencyCode, int], Mapping[str, AgencyCode]] = field(repr=False)
    """Resolved performer of every step, per procedure, origin and epoch."""
    senders: Mapping[tuple[ProcedureCode, str, int], Mapping[AgencyCode, Pairs]] = field(repr=False)
    """Per procedure, step and epoch: per origin, the (sender, receiver) pairs a transfer may take."""
    versions: Mapping[ProcedureCode, tuple[Procedure, ...]] = field(default_factory=dict, repr=False)
    """Every version of each procedure, oldest first."""
    epochs: tuple[dt.date, ...] = (dt.date.min,)
    """The first day of each epoch, sorted; the first is ``date.min``."""

    @property
    def step_count(self) -> int:
        return sum(len(p.steps) for p in self.procedures.values())

    def day(self, at: dt.datetime | dt.date | None) -> dt.date | None:
        """The local date a moment falls on (a date as it is; None stays None)."""
        if at is None or not isinstance(at, dt.datetime):
            return at
        return self.calendar.local(at).date()

    def epoch(self, at: dt.datetime | dt.date | None) -> int:
        """The epoch holding a moment; the last one when no moment is given."""
        day = self.day(at)
        if day is None:
            return len(self.epochs) - 1
        return bisect.bisect_right(self.epochs, day) - 1

    def procedure(self, code: ProcedureCode, at: dt.datetime | dt.date | None = None) -> Procedure:
        """The version of ``code`` in force at ``at`` (the latest without a moment); RoutingError
        naming its replacement when none is in force then."""
        versions = self.versions.get(code) or ((self.procedures[code],) if code in self.procedures else ())
        if not versions:
            raise RoutingError(f"no routing rules for procedure {code}")
        day = self.day(at)
        if day is None:
            return versions[-1]
        for version in versions:
            if version.in_force(day):
                return version
        return self._not_in_force(code, versions, day)

    def _not_in_force(self, code: ProcedureCode, versions: tuple[Procedure, ...], day: dt.date) -> Procedure:
        last = versions[-1]
        if last.end is not None and day > last.end:
            instead = ", ".join(str(c) for c in last.replaced_by)
            raise RoutingError(f"procedure {code} ({last.name}) is not in force on {day}: it ended on {last.end}"
                               + (f"; it was replaced by {instead}" if instead else ""))
        first = versions[0]
        raise RoutingError(f"procedure {code} ({first.name}) is not in force on {day}: "
                           + (f"it starts on {first.start}" if first.start and day < first.start
                              else "no version of it covers that day"))

    def abolished(self, code: AgencyCode, at: dt.datetime | dt.date) -> Agency | None:
        """The agency, when it existed and has ended by ``at``; None while it is in force (or unknown)."""
        agency = self.agencies.get(code)
        day = self.day(at)
        if agency is None or agency.end is None or day is None or day <= agency.end:
            return None
        return agency

    def agencies_in_force(self, at: dt.datetime | dt.date) -> list[Agency]:
        day = self.day(at)
        return [a for a in self.agencies.values() if day is not None and a.in_force(day)]

    def successor(self, agency: AgencyCode, at: dt.datetime | dt.date, origin: AgencyCode | None = None
                  ) -> AgencyCode:
        """The agency doing ``agency``'s work at ``at``: itself while it is in force, else its
        successor for ``origin`` (or for an agency above it), following the chain."""
        day = self.day(at)
        assert day is not None
        current, seen = agency, set()
        while current in self.agencies and not self.agencies[current].in_force(day):
            if current in seen:
                break
            seen.add(current)
            chosen = self._successor_for(self.agencies[current], origin)
            if chosen is None:
                raise RoutingError(f"agency {current} ({self.agencies[current].name}) ended on "
                                   f"{self.agencies[current].end} and names no successor"
                                   + (f" for {origin}" if origin else ""))
            current = chosen
        return current

    def _successor_for(self, agency: Agency, origin: AgencyCode | None) -> AgencyCode | None:
        general = [s.agency for s in agency.successors if s.for_ is None]
        if origin is not None:
            above = self._covering(origin)
            specific = [s.agency for s in agency.successors if s.for_ is not None and s.for_ in above]
            if specific:
                return specific[0]
        return general[0] if general else None

    def _covering(self, origin: AgencyCode) -> set[AgencyCode]:
        """The agencies a ``for=`` may name to cover dossiers received at ``origin``: the origin and
        the agencies above it, and the same for the agencies it merged into (a commune merged into
        another in 2020 has its dossiers covered by what covers that commune)."""
        found: set[AgencyCode] = set()
        pending = [origin]
        while pending:
            code = pending.pop()
            if code in found:
                continue
            found.update(self._ancestors(code))
            agency = self.agencies.get(code)
            if agency is not None:
                pending += [s.agency for s in agency.successors]
        return found

    def _ancestors(self, code: AgencyCode) -> list[AgencyCode]:
        chain, current = [], code
        while current is not None and current not in chain:
            chain.append(current)
            parent = self.agencies.get(current)
            current = parent.parent if parent else None  # type: ignore[assignment]
        return chain

    def agency(self, code: AgencyCode) -> Agency:
        try:
            return self.agencies[code]
        except KeyError:
            raise RoutingError(f"agency {code} is not in the directory") from None

    def route(self, procedure: ProcedureCode, origin: AgencyCode,
              at: dt.datetime | dt.date | None = None) -> Mapping[str, AgencyCode]:
        """The agency performing each step when the dossier was received at ``origin`` at ``at``."""
        route = self.routes.get((procedure, origin, self.epoch(at)))
        if route is None:
            proc = self.procedure(procedure, at)
            day = self.day(at)
            agency = self.agencies.get(origin)
            if agency is not None and day is not None and not agency.in_force(day):
                raise RoutingError(f"{origin} ({agency.name}) is not in force on {day}"
                                   + (f": it ended on {agency.end}" if agency.end and day > agency.end else ""))
            raise RoutingError(f"procedure {procedure} is not received at {origin}; it is received "
                               f"by agencies of kind {', '.join(proc.origins)}")
        return route

    def next_steps(self, procedure: ProcedureCode, origin: AgencyCode, received_at: dt.datetime,
                   done: Mapping[str, dt.datetime]) -> list[NextStep]:
        """Steps whose prerequisites are all done and that are not done themselves, with due dates.

        A step counts from when its last prerequisite was done (from receipt for the first).
        """
        proc = self.procedure(procedure, received_at)
        route = self.route(procedure, origin, received_at)
        unknown = done.keys() - route.keys()
        if unknown:
            raise RoutingError(f"procedure {procedure} has no step {sorted(unknown)[0]!r}")
        ready = []
        finished = done.keys()
        for step, requires in proc.requires:
            if step.id in done or not requires <= finished:
                continue
            start = max((done[p] for p in step.after), default=received_at)
            due = None if step.paused else self.calendar.due(start, step.budget, proc.cutoff)
            ready.append(NextStep(step, route[step.id], due))
        return ready

    def due_date(self, procedure: ProcedureCode, received_at: dt.datetime) -> dt.date:
        """When the whole procedure is due, for a dossier received at ``received_at``."""
        proc = self.procedure(procedure, received_at)
        return self.calendar.due(received_at, proc.budget, proc.cutoff)

    def plan(self, procedure: ProcedureCode, origin: AgencyCode,
             received_at: dt.datetime) -> list[NextStep]:
        """Every step with its performer and its due date if each step ends on its due date.

        Paused steps are taken to end on the day they start (the applicant pays at once).
        """
        proc = self.procedure(procedure, received_at)
        route = self.route(procedure, origin, received_at)
        first = self.calendar.first_counted_day(received_at, proc.cutoff)
        ends: dict[str, dt.date] = {}
        plan = []
        for step in proc.steps:
            start = max((ends[p] for p in step.after), default=first)
            ends[step.id] = start if step.paused else self.calendar.add(start, step.budget)
            plan.append(NextStep(step, route[step.id], None if step.paused else ends[step.id]))
        return plan

    def authorize(self, sender: AgencyCode, receiver: AgencyCode, procedure: ProcedureCode,
                  step: str, origin: AgencyCode | None = None, at: dt.datetime | dt.date | None = None) -> Decision:
        """May ``sender`` hand ``receiver`` a dossier for ``step``? Narrowed to one origin if given,
        under the rules in force at ``at`` (when the dossier was received).

        A step's dossier comes from the performer of one of its prerequisites and goes to its
        own performer.
        """
        try:
            proc = self.procedure(procedure, at)
        except RoutingError as exc:
            return Decision(False, str(exc))
        per_origin = self.senders.get((procedure, step, self.epoch(at)))
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


    def authorize_successor(self, sender: AgencyCode, receiver: AgencyCode, procedure: ProcedureCode, step: str,
                            origin: AgencyCode, at: dt.datetime | dt.date | None, now: dt.datetime) -> Decision:
        """May ``sender`` hand ``receiver`` a step of a dossier received at ``at``, where the route of
        that day names agencies abolished since? Yes when ``receiver`` performs the step (as the
        route says, or as the successor for the origin now) and ``sender`` performed a prerequisite
        (as the route says, or as a successor now), or is the abolished performer handing its own
        step over to its successor."""
        try:
            route = self.route(procedure, origin, at)
            proc = self.procedure(procedure, at)
            planned = route[step]
            successor = self.successor(planned, now, origin)
            allowed = {b for before in proc.step(step).after
                       for b in (route[before], self.successor(route[before], now, origin))}
        except (RoutingError, KeyError) as exc:
            return Decision(False, str(exc))
        if receiver not in (planned, successor):
            return Decision(False, f"step {step!r} of {procedure} is performed by {successor}, not {receiver}")
        if receiver == successor != planned:
            allowed.add(planned)  # the abolished performer hands its own step over
        if sender not in allowed:
            return Decision(False, f"{sender} does not perform a step before {step!r} of {procedure}, "
                                   "nor took one over")
        return Decision(True, f"{sender} → {receiver} for step {step!r} of {procedure}, across a reorganisation")

    def participants(self, procedure: ProcedureCode, origin: AgencyCode, at: dt.datetime | dt.date | None,
                     now: dt.datetime) -> set[AgencyCode]:
        """The agencies on a dossier's route, and those that took a step over from one abolished since."""
        route = self.route(procedure, origin, at)
        found = set(route.values())
        for agency in route.values():
            try:
                found.add(self.successor(agency, now, origin))
            except RoutingError:
                continue
        return found


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
