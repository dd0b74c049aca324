"""What administrators see of a rule set: a route as a table, a picture, and an edit in words."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import RoutingError
from exchange.rules.model import Procedure, RuleSet, Step

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def summary(rules: RuleSet) -> str:
    years = rules.calendar.years
    dated = f", {len(rules.epochs) - 1} dated change(s)" if len(rules.epochs) > 1 else ""
    versions = sum(len(v) for v in rules.versions.values()) or len(rules.procedures)
    return (f"{len(rules.agencies)} agencies, {len(rules.procedures)} procedures ({versions} versions), "
            f"{rules.step_count} steps, {len(rules.routes)} routes{dated}; calendar {years[0]}–{years[-1]} "
            f"with {len(rules.calendar.holidays)} days off; digest sha256:{rules.digest}")


def _day(day: dt.date | None) -> str:
    return f"{day.isoformat()} {DAY_NAMES[day.weekday()]}" if day else ""


def explain(rules: RuleSet, procedure: ProcedureCode, origin: AgencyCode,
            received_at: dt.datetime) -> str:
    """The route as a table under the rules in force at ``received_at``: step, action, agency
    code and name, budget, due date. RoutingError for a procedure not in force then (naming its
    replacement) or an origin that does not exist then."""
    proc = rules.procedure(procedure, received_at)
    plan = rules.plan(procedure, origin, received_at)
    local = rules.calendar.local(received_at)
    first = rules.calendar.first_counted_day(received_at, proc.cutoff)
    cutoff = rules.calendar.cutoff if proc.cutoff == "calendar" else proc.cutoff
    lines = [
        f"{proc.code}  {proc.name}",
        f"{proc.scope}, {proc.budget} working days; {proc.span}; "
        + (f"received after {cutoff:%H:%M} counts from the next working day" if cutoff else "no afternoon cut-off"),
        *([f"source: {proc.source}"] if proc.source else []),
        f"received at {origin} ({rules.agency(origin).name}) on {local:%Y-%m-%d %H:%M %z}",
        f"counts from {_day(first)}; "
        f"the whole procedure is due {_day(rules.due_date(procedure, received_at))}",
        "",
    ]
    rows: list[tuple[str, ...]] = [("step", "action", "agency", "name", "budget", "due", "after")]
    for item in plan:
        step = item.step
        budget = "paused" if step.paused else str(step.budget)
        due = "when the applicant has paid" if step.paused else _day(item.due)
        rows.append((step.id, step.action, str(item.agency), rules.agency(item.agency).name,
                     budget, due, " + ".join(step.after)))
    lines += _table(rows)
    if any(s.paused for s in proc.steps):
        lines += ["", "Paused steps wait on the applicant; later due dates assume payment the same day."]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def dot(rules: RuleSet, procedure: ProcedureCode, origin: AgencyCode | None = None) -> str:
    """The route in Graphviz DOT: steps as boxes, prerequisites as arrows."""
    proc = rules.procedure(procedure)
    route = rules.route(procedure, origin) if origin is not None else None
    lines = [
        f'digraph "{proc.code}" {{',
        "  rankdir=LR;",
        '  graph [fontname="DejaVu Sans", labelloc=t, fontsize=12];',
        '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="DejaVu Sans",'
        " fontsize=10];",
        '  edge [color="#555555"];',
        f'  label="{_esc(f"{proc.code} {proc.name}")}\\n{proc.scope}, {proc.budget} working days";',
    ]
    for step in proc.steps:
        lines.append(f'  "{step.id}" [{_node(rules, step, route)}];')
    for step in proc.steps:
        for before in step.after:
            lines.append(f'  "{before}" -> "{step.id}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node(rules: RuleSet, step: Step, route: Mapping[str, AgencyCode] | None) -> str:
    who = f"{route[step.id]}\\n{_esc(rules.agency(route[step.id]).name)}" if route is not None else _esc(str(step.by))
    budget = "clock paused: applicant pays" if step.paused else f"{step.budget} working days"
    style = ', style="rounded,dashed,filled", fillcolor="#fff4e0"' if step.paused else ""
    return f'label="{step.id}: {step.action}\\n{who}\\n{budget}"{style}'


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def diff(old: RuleSet, new: RuleSet) -> list[str]:
    """What an edit changes, one sentence per change, in the order an administrator reads."""
    if old.digest == new.digest:
        return []
    return [*_agency_changes(old, new), *_calendar_changes(old, new), *_procedure_changes(old, new)]


def _agency_changes(old: RuleSet, new: RuleSet) -> Iterator[str]:
    for code in sorted(set(old.agencies) | set(new.agencies)):
        before, after = old.agencies.get(code), new.agencies.get(code)
        if before is None and after is not None:
            yield f"agency {code} added: {after.name} ({after.kind}, {after.level})"
        elif after is None and before is not None:
            yield f"agency {code} removed: {before.name}"
        elif before != after and before is not None and after is not None:
            yield from _field_changes(f"agency {code}", before, after,
                                      ("name", "level", "kind", "parent", "start", "end", "successors"))


def _field_changes(what: str, before: object, after: object, names: tuple[str, ...]) -> Iterator[str]:
    for name in names:
        a, b = getattr(before, name), getattr(after, name)
        if a != b:
            yield f"{what}: {name} {_show(a)} → {_show(b)}"


def _clock(value: dt.time | None) -> str:
    return f"{value:%H:%M}" if value else "none"


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return " + ".join(map(str, value)) or "(none)"
    return "(none)" if value is None else str(value)


def _calendar_changes(old: RuleSet, new: RuleSet) -> Iterator[str]:
    a, b = old.calendar, new.calendar
    if a.years != b.years:
        yield f"calendar: years {a.years[0]}–{a.years[-1]} → {b.years[0]}–{b.years[-1]}"
    if a.cutoff != b.cutoff:
        yield f"calendar: afternoon cut-off {_clock(a.cutoff)} → {_clock(b.cutoff)}"
    if a.weekend != b.weekend:
        yield f"calendar: weekend days changed to {', '.join(DAY_NAMES[d] for d in sorted(b.weekend))}"
    for day in sorted(set(a.holidays) | set(b.holidays)):
        if day not in a.holidays:
            yield f"calendar: {_day(day)} is now a day off ({b.holidays[day]})"
        elif day not in b.holidays:
            yield f"calendar: {_day(day)} is no longer a day off (was {a.holidays[day]})"
    for day in sorted(set(a.makeup_days) ^ set(b.makeup_days)):
        state = "now" if day in b.makeup_days else "no longer"
        yield f"calendar: {_day(day)} is {state} a make-up working day"


def _procedure_changes(old: RuleSet, new: RuleSet) -> Iterator[str]:
    for code in sorted(set(old.procedures) | set(new.procedures)):
        before, after = old.procedures.get(code), new.procedures.get(code)
        if before is None and after is not None:
            yield (f"procedure {code} added: {after.name} "
                   f"({len(after.steps)} steps, {after.budget} working days)")
        elif after is None and before is not None:
            yield f"procedure {code} removed: {before.name}"
        elif before is not None and after is not None and before != after:
            yield from _field_changes(f"procedure {code}", before, after,
                                      ("name", "scope", "budget", "origins", "start", "end", "cutoff", "replaced_by"))
            yield from _step_changes(before, after)
    yield from _route_changes(old, new)


def _step_changes(before: Procedure, after: Procedure) -> Iterator[str]:
    old_steps = {s.id: s for s in before.steps}
    new_steps = {s.id: s for s in after.steps}
    for step_id in [s.id for s in before.steps] + [s.id for s in after.steps if s.id not in old_steps]:
        a, b = old_steps.get(step_id), new_steps.get(step_id)
        what = f"procedure {before.code} step {step_id!r}"
        if a is None and b is not None:
            yield f"{what} added: {b.action} by {b.by}, {b.budget} working days, after {_show(b.after)}"
        elif b is None:
            yield f"{what} removed"
        elif a != b:
            yield from _field_changes(what, a, b, ("action", "by", "budget", "after", "paused"))


def _route_changes(old: RuleSet, new: RuleSet) -> Iterator[str]:
    """Who performs a step changes even when no step changed, when the directory does."""
    moved: dict[tuple[ProcedureCode, str, AgencyCode, AgencyCode], list[AgencyCode]] = {}
    last_old, last_new = len(old.epochs) - 1, len(new.epochs) - 1
    for (code, origin, index), route in sorted(new.routes.items()):
        before = old.routes.get((code, origin, last_old))
        if before is None or index != last_new:
            continue
        for step_id, agency in route.items():
            if step_id in before and before[step_id] != agency:
                moved.setdefault((code, step_id, before[step_id], agency), []).append(origin)
    for (code, step_id, a, b), origins in moved.items():
        more = "…" if len(origins) > 3 else ""
        yield (f"procedure {code} step {step_id!r}: performed by {b} instead of {a} for "
               f"{len(origins)} origin(s) ({', '.join(map(str, origins[:3]))}{more})")


# A reorganisation, day by day -------------------------------------------------------------

def reorganisation(rules: RuleSet, day: dt.date) -> list[str]:
    """What changes on ``day`` in a dated rule set, in words: agencies that end (each successor,
    and for whom), agencies that begin, procedures that end (their replacements) or begin, and
    each step whose performer changes for dossiers received from that day, origin by origin."""
    before = day - dt.timedelta(days=1)
    lines: list[str] = []
    for agency in sorted(rules.agencies.values(), key=lambda a: a.code):
        if agency.end == before:
            lines.append(f"agency {agency.code} ({agency.name}) ends on {before}")
            for successor in agency.successors:
                whom = (f"for dossiers of {successor.for_} ({_name(rules, successor.for_)})" if successor.for_
                        else "for all of its work")
                lines.append(f"    → {successor.agency} ({_name(rules, successor.agency)}) {whom}")
    lines += [f"agency {a.code} ({a.name}) begins on {day}: {a.kind}, {a.level}"
              for a in sorted(rules.agencies.values(), key=lambda a: a.code) if a.start == day]
    for code, versions in sorted(rules.versions.items()):
        for version in versions:
            if version.end == before and not any(v.start == day for v in versions):
                instead = ", ".join(f"{c} ({_procedure_name(rules, c)})" for c in version.replaced_by)
                lines.append(f"procedure {code} ({version.name}) ends on {before}"
                             + (f"; replaced by {instead}" if instead else ""))
            if version.start == day:
                again = any(v.end == before for v in versions)
                lines.append(f"procedure {code} ({version.name}) " + ("has a new version" if again else "begins")
                             + f" from {day}")
    return lines + list(_moved_on(rules, before, day))


def _moved_on(rules: RuleSet, before: dt.date, day: dt.date) -> Iterator[str]:
    """Each step whose performer changes between two days, for the same origin or its successor."""
    old, new = rules.epoch(before), rules.epoch(day)
    if old == new:
        return
    for (code, origin, index), route in sorted(rules.routes.items()):
        if index != old:
            continue
        try:
            heir = rules.successor(origin, day, origin)
            after = rules.routes.get((code, heir, new))
        except RoutingError:
            after = None
        if after is None:
            continue
        where = origin if heir == origin else f"{origin} (now {heir})"
        for step_id, agency in route.items():
            if step_id in after and after[step_id] != agency:
                yield (f"procedure {code} step {step_id!r} received at {where}: {agency} "
                       f"({_name(rules, agency)}) → {after[step_id]} ({_name(rules, after[step_id])})")


def _name(rules: RuleSet, code: AgencyCode) -> str:
    agency = rules.agencies.get(code)
    return agency.name if agency else "not in the directory"


def _procedure_name(rules: RuleSet, code: ProcedureCode) -> str:
    procedure = rules.procedures.get(code)
    return procedure.name if procedure else "not in the rules"
