"""Loading routing rules: every XML file of a directory, merged, checked, resolved.

Loading reports every problem it finds as ``file:line:col: message`` (schema errors first;
the cross-file checks run once every file is schema-valid) and builds nothing unless the whole
rule set is sound. ``RuleBook`` swaps a freshly loaded rule set in only when it is whole.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from exchange.codes import AgencyCode, ProcedureCode
from exchange.errors import MalformedXml, Problem, RoutingError, RuleError, TooLarge
from exchange.rules.calendar import WEEKDAYS, Cutoff, WorkingCalendar
from exchange.rules.model import Agency, Level, Pairs, Procedure, RuleSet, Selector, Step, Successor
from exchange.xml import safexml, schemas
from exchange.xml.datatypes import parse_date

RULES_NS = "urn:vn-exchange:rules:1"
SCHEMA = schemas.ROUTING_RULES
MAX_FILE_BYTES = 4 * 1024 * 1024


def r(name: str) -> str:
    return f"{{{RULES_NS}}}{name}"


@dataclass
class _Source:
    """One rule file: its path, lines (for columns) and parsed tree."""

    path: str
    lines: list[str]
    root: etree._Element

    def at(self, el: etree._Element, attribute: str | None = None) -> tuple[str, int, int]:
        line: int = getattr(el, "sourceline", None) or 1
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        needle = f'{attribute}="' if attribute else f"<{etree.QName(el).localname}"
        column = text.find(needle)
        if column < 0 and attribute:
            column = text.find(f"{attribute}='")
        return self.path, line, (column + 1 if column >= 0 else len(text) - len(text.lstrip()) + 1)


@dataclass
class _Report:
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: tuple[str, int, int], message: str) -> None:
        self.problems.append(Problem(*where, message))


@dataclass
class _Placed:
    """A model object and where it was written."""

    value: Any
    source: _Source
    element: etree._Element

    def at(self, attribute: str | None = None) -> tuple[str, int, int]:
        return self.source.at(self.element, attribute)


def load(directory: Path) -> RuleSet:
    """The rule set of every ``*.xml`` file under ``directory``, or RuleError with every problem."""
    if not directory.is_dir():
        raise RuleError([Problem(str(directory), 1, 1, "not a directory of rule files")])
    files = sorted(p for p in directory.rglob("*.xml") if p.is_file())
    if not files:
        raise RuleError([Problem(str(directory), 1, 1, "no *.xml rule files here")])
    return load_files(files)


def load_files(paths: Iterable[Path]) -> RuleSet:
    report = _Report()
    sources = [s for s in (_read(p, report) for p in paths) if s is not None]
    if report.problems:
        report.add((sources[0].path if sources else "-", 1, 1),
                   "note: cross-file checks run once every file above is valid")
        raise RuleError(report.problems)
    return _Builder(sources, report).build()


def _read(path: Path, report: _Report) -> _Source | None:
    data = path.read_bytes()
    try:
        root = safexml.parse(data, max_bytes=MAX_FILE_BYTES, source=str(path))
    except MalformedXml as exc:
        report.add((str(path), exc.line, exc.column), exc.message.split(": ", 2)[-1])
        return None
    except TooLarge as exc:
        report.add((str(path), 1, 1), exc.message)
        return None
    lines = data.decode("utf-8", errors="replace").splitlines()
    validator = schemas.compiled(SCHEMA)
    if not validator.validate(root):
        log: Any = validator.error_log
        for entry in log:
            message = entry.message.replace(f"{{{RULES_NS}}}", "")
            report.add((str(path), entry.line, _column(lines, entry.line, message)), message)
        return None
    return _Source(str(path), lines, root)


_ATTRIBUTE = re.compile(r"attribute '([\w:-]+)'")
_ELEMENT = re.compile(r"Element '([\w:-]+)'")


def _column(lines: list[str], line: int, message: str) -> int:
    """libxml2 gives schema errors no column: point at the attribute or element it names."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    for pattern, template in ((_ATTRIBUTE, '{}="'), (_ELEMENT, "<{}")):
        match = pattern.search(message)
        if match and (index := text.find(template.format(match.group(1)))) >= 0:
            return index + 1
    return len(text) - len(text.lstrip()) + 1


class _Builder:
    """Turns schema-valid trees into a RuleSet, collecting every semantic problem on the way."""

    def __init__(self, sources: list[_Source], report: _Report) -> None:
        self.sources = sources
        self.report = report
        self.agencies: dict[AgencyCode, _Placed] = {}
        self.procedures: dict[ProcedureCode, list[_Placed]] = {}
        """Every version of each procedure, oldest first."""

    def elements(self, name: str) -> Iterable[tuple[_Source, etree._Element]]:
        for source in self.sources:
            for el in source.root.iter(r(name)):
                yield source, el

    def build(self) -> RuleSet:
        self._agencies()
        calendar = self._calendar()
        self._procedures()
        agencies = {code: placed.value for code, placed in self.agencies.items()}
        epochs = self._epochs()
        routes, senders = self._routes(agencies, epochs)
        if self.report.problems or calendar is None:
            raise RuleError(self.report.problems)
        versions = {code: tuple(p.value for p in placed) for code, placed in self.procedures.items()}
        latest = {code: found[-1] for code, found in versions.items()}
        rules = RuleSet(agencies, calendar, latest, _digest(agencies, calendar, versions), routes, senders,
                        versions, epochs)
        self._check_heirs(rules)
        if self.report.problems:
            raise RuleError(self.report.problems)
        return rules

    def _check_heirs(self, rules: RuleSet) -> None:
        """Every dossier in flight has somewhere to go: for each route, each agency on it that ends
        has a successor, for that route's origin, in force the day after (along the chain)."""
        reported: set[tuple[AgencyCode, AgencyCode]] = set()
        for (_, origin, _), route in rules.routes.items():
            for agency in set(route.values()):
                end = rules.agencies[agency].end
                if end is None or (agency, origin) in reported:
                    continue
                try:
                    heir = rules.successor(agency, end + dt.timedelta(days=1), origin)
                except RoutingError as exc:
                    reported.add((agency, origin))
                    self.report.add(self.agencies[agency].at("until"), f"dossiers received at {origin} in flight "
                                    f"through {agency} have nowhere to go after {end}: {exc} (add <successor "
                                    f"agency=\"CODE\" for=\"{origin}\"/> or one for all)")
                    continue
                if not rules.agencies[heir].in_force(end + dt.timedelta(days=1)):
                    reported.add((agency, origin))
                    self.report.add(self.agencies[agency].at("until"), f"dossiers received at {origin} in flight "
                                    f"through {agency} go to {heir}, not in force on {end + dt.timedelta(days=1)}")

    def _epochs(self) -> tuple[dt.date, ...]:
        """The days on which anything starts, or starts no longer: where the rules in force change."""
        days = {dt.date.min}
        dated = [p.value for p in self.agencies.values()] + [p.value for v in self.procedures.values() for p in v]
        for item in dated:
            if item.start is not None:
                days.add(item.start)
            if item.end is not None and item.end < dt.date.max:
                days.add(item.end + dt.timedelta(days=1))
        return tuple(sorted(days))

    # The agency directory -------------------------------------------------------------

    def _agencies(self) -> None:
        for source, el in self.elements("agency"):
            code = AgencyCode(el.get("code", ""))
            parent = el.get("parent")
            start, end = _span(source, el, self.report)
            successors = tuple(Successor(AgencyCode(s.get("agency", "")), AgencyCode(s.get("for", "")) if s.get("for")
                                         else None) for s in el.iter(r("successor")))
            agency = Agency(code, el.findtext(r("name")) or "", Level(el.get("level", "")),
                            el.get("kind", ""), AgencyCode(parent) if parent else None, start, end, successors)
            placed = _Placed(agency, source, el)
            if code in self.agencies:
                first = self.agencies[code].at("code")
                self.report.add(placed.at("code"), f"duplicate agency code {code} "
                                f"(first defined at {first[0]}:{first[1]})")
                continue
            self.agencies[code] = placed
        for placed in self.agencies.values():
            self._check_parent(placed)
            self._check_successors(placed)

    def _check_successors(self, placed: _Placed) -> None:
        """An agency that ends names who takes over, and each successor exists the next day."""
        agency: Agency = placed.value
        if agency.end is None:
            if agency.successors:
                self.report.add(placed.at(), f"agency {agency.code} names successors but no until= day")
            return
        if not agency.successors:
            self.report.add(placed.at("until"), f"agency {agency.code} ({agency.name}) ends on {agency.end} and "
                            "names no <successor agency=\"CODE\"/>: its work in flight would have nowhere to go")
        after = agency.end + dt.timedelta(days=1)
        for successor, el in zip(agency.successors, placed.element.iter(r("successor")), strict=True):
            found = self.agencies.get(successor.agency)
            if found is None:
                self.report.add(placed.source.at(el, "agency"), f"agency {agency.code}: successor "
                                f"{successor.agency} is not in the directory")
            elif not found.value.in_force(after):
                self.report.add(placed.source.at(el, "agency"), f"agency {agency.code} ends on {agency.end} but "
                                f"its successor {successor.agency} is not in force on {after}")
            if successor.for_ is not None and successor.for_ not in self.agencies:
                self.report.add(placed.source.at(el, "for"), f"agency {agency.code}: successor for "
                                f"{successor.for_}, which is not in the directory")
    def _check_parent(self, placed: _Placed) -> None:
        agency: Agency = placed.value
        seen = {agency.code}
        parent = agency.parent
        while parent is not None:
            if parent not in self.agencies:
                if parent == agency.parent:
                    self.report.add(placed.at("parent"), f"agency {agency.code}: parent {parent} "
                                    "is not in the directory")
                return
            if parent in seen:
                self.report.add(placed.at("parent"), f"agency {agency.code}: its parents form a cycle "
                                f"through {parent}")
                return
            seen.add(parent)
            parent = self.agencies[parent].value.parent

    # The working calendar -------------------------------------------------------------

    def _calendar(self) -> WorkingCalendar | None:
        found = list(self.elements("calendar"))
        if not found:
            where = (self.sources[0].path, 1, 1)
            self.report.add(where, "no <calendar>: due dates cannot be computed without one")
            return None
        for source, el in found[1:]:
            self.report.add(source.at(el), "a second <calendar>; keep one, with a <year> per year")
        source, el = found[0]
        holidays: dict[dt.date, str] = {}
        makeup: dict[dt.date, str] = {}
        years: list[int] = []
        for year_el in el.iter(r("year")):
            year = int(year_el.get("value", "0"))
            if year in years:
                self.report.add(source.at(year_el, "value"), f"year {year} appears twice")
            years.append(year)
            self._year(source, year_el, year, holidays, makeup)
        weekend = frozenset(WEEKDAYS.index(d) for d in (el.get("weekend") or "").split())
        return WorkingCalendar(
            years=_contiguous(sorted(set(years)), source.at(el), self.report),
            weekend=weekend, holidays=holidays, makeup_days=makeup,
            cutoff=_clock(el.get("cutoff")), timezone=_offset(el.get("timezone") or "+07:00"))

    def _year(self, source: _Source, year_el: etree._Element, year: int,
              holidays: dict[dt.date, str], makeup: dict[dt.date, str]) -> None:
        flags = set((self._calendar_flags() or "").split())
        for holiday in year_el.iter(r("holiday")):
            if holiday.get("flag") and holiday.get("flag") not in flags:
                continue  # announced, not confirmed: it counts once its flag is switched on
            for day in _holiday_days(source, holiday, year, self.report):
                holidays[day] = holiday.get("name", "")
        for workday in year_el.iter(r("workday")):
            if workday.get("flag") and workday.get("flag") not in flags:
                continue
            worked = _date(source, workday, "date", self.report)
            if worked is None:
                continue
            if worked.year != year:
                self.report.add(source.at(workday, "date"), f"{worked} is not in year {year}")
            makeup[worked] = workday.get("name", "")

    def _calendar_flags(self) -> str | None:
        return next((el.get("flags") for _, el in self.elements("calendar")), None)

    # Procedures -----------------------------------------------------------------------

    def _procedures(self) -> None:
        for source, el in self.elements("procedure"):
            code = ProcedureCode(el.get("code", ""))
            procedure = self._procedure(source, el, code)
            if procedure is None:
                continue
            placed = _Placed(procedure, source, el)
            clash = next((v for v in self.procedures.get(code, []) if _overlap(v.value, procedure)), None)
            if clash is not None:
                first = clash.at("code")
                self.report.add(source.at(el, "code"), f"duplicate procedure {code}: this version and the one at "
                                f"{first[0]}:{first[1]} are both in force on some day (give each from= and until= "
                                "days that do not overlap)")
                continue
            self.procedures.setdefault(code, []).append(placed)
        for code, versions in self.procedures.items():
            versions.sort(key=lambda p: p.value.start or dt.date.min)
            self._check_replacements(code, versions[-1])

    def _check_replacements(self, code: ProcedureCode, last: _Placed) -> None:
        """A procedure that ends names what replaces it, in force the next day."""
        procedure: Procedure = last.value
        if procedure.end is None:
            return
        if not procedure.replaced_by:
            self.report.add(last.at("until"), f"procedure {code} ends on {procedure.end} and names no "
                            "<replaced-by procedure=\"CODE\"/>: a desk would not know what to receive instead")
        after = procedure.end + dt.timedelta(days=1)
        for other in procedure.replaced_by:
            if not any(v.value.in_force(after) for v in self.procedures.get(other, [])):
                self.report.add(last.at("until"), f"procedure {code} is replaced by {other}, which is not in "
                                f"force on {after}")

    def _procedure(self, source: _Source, el: etree._Element, code: ProcedureCode) -> Procedure | None:
        steps: dict[str, tuple[Step, etree._Element]] = {}
        for step_el in el.iter(r("step")):
            step = _step(step_el)
            if step.id in steps:
                self.report.add(source.at(step_el, "id"), f"procedure {code}: duplicate step {step.id!r}")
                continue
            steps[step.id] = (step, step_el)
            self._check_selector(source, step_el, code, step)
        if not self._check_graph(source, el, code, steps):
            return None
        ordered = _topological({s.id: s for s, _ in steps.values()})
        start, end = _span(source, el, self.report)
        cutoff: Cutoff = _clock(el.get("cutoff")) if el.get("cutoff") else "calendar"
        procedure = Procedure(code, el.findtext(r("name")) or "", el.get("scope", ""),
                              int(el.get("budget", "0")), tuple((el.get("origins") or "").split()),
                              tuple(ordered), start, end, cutoff,
                              tuple(ProcedureCode(x.get("procedure", "")) for x in el.iter(r("replaced-by"))),
                              (el.findtext(r("source")) or "").strip() or None)
        self._check_budget(source, el, procedure)
        return procedure

    def _check_selector(self, source: _Source, step_el: etree._Element, code: ProcedureCode,
                        step: Step) -> None:
        by = step_el.find(r("by"))
        assert by is not None  # the schema requires <by>
        given = [a for a in ("origin", "kind", "agency") if by.get(a) is not None]
        where = source.at(by)
        if given not in (["origin"], ["kind"], ["agency"]):
            self.report.add(where, f"procedure {code} step {step.id!r}: <by> needs exactly one of "
                            f"origin=\"true\", kind=\"...\" or agency=\"CODE\" (found {given or 'none'})")
        elif step.by.within is not None and step.by.kind is None:
            self.report.add(where, f"procedure {code} step {step.id!r}: within= goes with kind=")
        elif step.by.agency is not None and step.by.agency not in self.agencies:
            self.report.add(source.at(by, "agency"), f"procedure {code} step {step.id!r}: agency "
                            f"{step.by.agency} is not in the directory")

    def _check_graph(self, source: _Source, el: etree._Element, code: ProcedureCode,
                     steps: Mapping[str, tuple[Step, etree._Element]]) -> bool:
        sound = True
        for step, step_el in steps.values():
            for before in step.after:
                if before not in steps:
                    sound = False
                    self.report.add(source.at(step_el, "after"), f"procedure {code} step {step.id!r}: "
                                    f"after={before!r} names no step of this procedure")
        if not sound:
            return False
        cycle = _cycle({s.id: s.after for s, _ in steps.values()})
        if cycle:
            step_el = steps[cycle[0]][1]
            self.report.add(source.at(step_el, "after"), f"procedure {code}: steps form a cycle "
                            f"{' → '.join(cycle)}")
            return False
        return self._check_ends(source, el, code, steps)

    def _check_ends(self, source: _Source, el: etree._Element, code: ProcedureCode,
                    steps: Mapping[str, tuple[Step, etree._Element]]) -> bool:
        entries = [s for s, _ in steps.values() if not s.after]
        used = {b for s, _ in steps.values() for b in s.after}
        finals = [s for s, _ in steps.values() if s.id not in used]
        sound = True
        if len(entries) != 1:
            sound = False
            self.report.add(source.at(el, "code"), f"procedure {code}: needs exactly one first step "
                            f"(one without after=), found {', '.join(s.id for s in entries) or 'none'}")
        for step in entries[1:]:
            self.report.add(source.at(steps[step.id][1], "id"), f"procedure {code} step {step.id!r}: "
                            f"unreachable from the first step {entries[0].id!r}")
        if len(finals) != 1:
            sound = False
            for step in finals[:-1] if finals else []:
                self.report.add(source.at(steps[step.id][1], "id"), f"procedure {code} step "
                                f"{step.id!r}: leads nowhere; every step must lead to the final step "
                                f"{finals[-1].id!r}")
        return sound

    def _check_budget(self, source: _Source, el: etree._Element, procedure: Procedure) -> None:
        length, path = _critical_path(procedure)
        if length > procedure.budget:
            self.report.add(source.at(el, "budget"), f"procedure {procedure.code}: the steps "
                            f"{' → '.join(path)} take {length} working days, more than the "
                            f"procedure's budget of {procedure.budget}")

    # Resolving every route from every origin ------------------------------------------

    def _routes(self, agencies: Mapping[AgencyCode, Agency], epochs: tuple[dt.date, ...]) -> tuple[
            dict[tuple[ProcedureCode, AgencyCode, int], dict[str, AgencyCode]],
            dict[tuple[ProcedureCode, str, int], dict[AgencyCode, Pairs]]]:
        """Every route from every origin, epoch by epoch, over the agencies in force then; each
        failure reported once, with the first day it fails."""
        routes: dict[tuple[ProcedureCode, AgencyCode, int], dict[str, AgencyCode]] = {}
        senders: dict[tuple[ProcedureCode, str, int], dict[AgencyCode, Pairs]] = {}
        reported: set[tuple[object, ...]] = set()
        for index, day in enumerate(epochs):
            present = {code: a for code, a in agencies.items() if a.in_force(day)}
            self._check_parents_present(present, agencies, day, reported)
            resolver = _Resolver(present)
            for code, versions in self.procedures.items():
                placed = next((v for v in versions if v.value.in_force(day)), None)
                if placed is None:
                    continue
                procedure: Procedure = placed.value
                origins = [a for a in present.values() if a.kind in procedure.origins]
                if not origins and (code, "origins") not in reported:
                    reported.add((code, "origins"))
                    self.report.add(placed.at("origins"), f"procedure {code}{_on(day)}: no agency of kind "
                                    f"{' or '.join(procedure.origins)} in the directory receives it")
                for origin in origins:
                    route = self._route(placed, procedure, origin, resolver, day, reported)
                    if route is None:
                        continue
                    routes[(code, origin.code, index)] = route
                    for step in procedure.steps:
                        pairs = frozenset((route[b], route[step.id]) for b in step.after)
                        senders.setdefault((code, step.id, index), {})[origin.code] = pairs
        return routes, senders

    def _check_parents_present(self, present: Mapping[AgencyCode, Agency], agencies: Mapping[AgencyCode, Agency],
                               day: dt.date, reported: set[tuple[object, ...]]) -> None:
        for agency in present.values():
            parent = agency.parent
            if parent is not None and parent in agencies and parent not in present and (agency.code, "parent") \
                    not in reported:
                reported.add((agency.code, "parent"))
                self.report.add(self.agencies[agency.code].at("parent"), f"agency {agency.code} is in force on "
                                f"{day} but its parent {parent} is not")

    def _route(self, placed: _Placed, procedure: Procedure, origin: Agency, resolver: _Resolver,
               day: dt.date, reported: set[tuple[object, ...]]) -> dict[str, AgencyCode] | None:
        route = {}
        for step in procedure.steps:
            found = resolver.resolve(step.by, origin)
            if len(found) != 1:
                key = (procedure.code, step.id, origin.code, procedure.start)
                if key not in reported:
                    reported.add(key)
                    step_el = next(e for e in placed.element.iter(r("step")) if e.get("id") == step.id)
                    by = step_el.find(r("by"))
                    what = "nothing" if not found else f"{len(found)} agencies ({', '.join(map(str, found))})"
                    self.report.add(placed.source.at(by if by is not None else step_el),
                                    f"procedure {procedure.code} step {step.id!r}: {step.by} resolves to "
                                    f"{what}{_on(day, ' in force')} for origin {origin.code} ({origin.name})")
                return None
            route[step.id] = found[0]
        return route


def _on(day: dt.date, what: str = "") -> str:
    """`` on DAY`` for a dated epoch; nothing for the one before any date."""
    return "" if day == dt.date.min else f"{what} on {day}"


def _overlap(a: Procedure, b: Procedure) -> bool:
    return (a.start or dt.date.min) <= (b.end or dt.date.max) and (b.start or dt.date.min) <= (a.end or dt.date.max)


def _span(source: _Source, el: etree._Element, report: _Report) -> tuple[dt.date | None, dt.date | None]:
    start = _date(source, el, "from", report) if el.get("from") else None
    end = _date(source, el, "until", report) if el.get("until") else None
    if start and end and end < start:
        report.add(source.at(el, "until"), f"until={end} comes before from={start}")
    return start, end


def _clock(text: str | None) -> dt.time | None:
    if not text:
        return None
    hours, minutes = (int(x) for x in text.split(":"))
    return dt.time(hours, minutes)


class _Resolver:
    """Resolves selectors against the directory; an agency's area at a level is its topmost
    ancestor-or-self at that level (the district committee, for every agency of the district)."""

    def __init__(self, agencies: Mapping[AgencyCode, Agency]) -> None:
        self.agencies = agencies
        self.by_kind: dict[str, list[Agency]] = {}
        for agency in agencies.values():
            self.by_kind.setdefault(agency.kind, []).append(agency)

    def area(self, code: AgencyCode, level: Level) -> AgencyCode | None:
        found = None
        current: AgencyCode | None = code
        while current is not None and current in self.agencies:
            agency = self.agencies[current]
            if agency.level == level:
                found = agency.code
            elif found is not None:
                break
            current = agency.parent
        return found

    def resolve(self, selector: Selector, origin: Agency) -> list[AgencyCode]:
        if selector.origin:
            return [origin.code]
        if selector.agency is not None:
            return [selector.agency]
        candidates = self.by_kind.get(selector.kind or "", [])
        if selector.within is None:
            return sorted(a.code for a in candidates)
        area = self.area(origin.code, selector.within)
        if area is None:
            return []
        return sorted(a.code for a in candidates if self.area(a.code, selector.within) == area)


def _step(el: etree._Element) -> Step:
    by = el.find(r("by"))
    get = by.get if by is not None else (lambda _name, _default=None: None)
    within, agency = get("within"), get("agency")
    selector = Selector(origin=get("origin") in ("true", "1"), kind=get("kind"),
                        within=Level(within) if within else None,
                        agency=AgencyCode(agency) if agency else None)
    return Step(id=el.get("id", ""), action=el.get("action", ""), by=selector,
                budget=int(el.get("budget", "0")), after=tuple((el.get("after") or "").split()),
                paused=el.get("clock") == "paused")


def _holiday_days(source: _Source, el: etree._Element, year: int, report: _Report) -> list[dt.date]:
    single, start, end = el.get("date"), el.get("from"), el.get("to")
    if single and not (start or end):
        first = last = _date(source, el, "date", report)
    elif start and end and not single:
        first, last = _date(source, el, "from", report), _date(source, el, "to", report)
    else:
        report.add(source.at(el), "a <holiday> needs date=, or from= and to=")
        return []
    if first is None or last is None:
        return []
    if first > last or last - first > dt.timedelta(days=31):
        report.add(source.at(el, "from"), f"holiday span {first} to {last} is not a span of 1 to 31 days")
        return []
    if first.year != year and last.year != year:
        report.add(source.at(el, "date" if single else "from"), f"{first} is not in year {year}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _date(source: _Source, el: etree._Element, attribute: str, report: _Report) -> dt.date | None:
    """An xs:date attribute in any form the schema allows, or None with the problem reported."""
    try:
        return parse_date(el.get(attribute, ""))
    except ValueError as exc:
        report.add(source.at(el, attribute), str(exc))
        return None


def _contiguous(years: list[int], where: tuple[str, int, int], report: _Report) -> tuple[int, ...]:
    if years and years != list(range(years[0], years[-1] + 1)):
        missing = sorted(set(range(years[0], years[-1] + 1)) - set(years))
        report.add(where, f"the calendar skips {', '.join(map(str, missing))}: deadlines across a "
                   "missing year cannot be counted")
    return tuple(years)


def _offset(text: str) -> dt.timezone:
    sign = -1 if text.startswith("-") else 1
    hours, minutes = (int(x) for x in text[1:].split(":"))
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def _cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A cycle through the ``after`` edges, as a list of step ids, or [] if there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for before in graph[node]:
            if state.get(before) == 1:
                return [*stack[stack.index(before):], before]
            if before not in state:
                found = visit(before)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def _topological(steps: Mapping[str, Step]) -> list[Step]:
    """Steps ordered so that each comes after its prerequisites; ties keep file order."""
    done: set[str] = set()
    ordered: list[Step] = []
    pending = list(steps.values())
    while pending:
        ready = [s for s in pending if all(b in done for b in s.after)]
        for step in ready:
            done.add(step.id)
            ordered.append(step)
        pending = [s for s in pending if s.id not in done]
    return ordered


def _critical_path(procedure: Procedure) -> tuple[int, list[str]]:
    """The longest chain of running-clock budgets through the steps, and its steps."""
    best: dict[str, tuple[int, list[str]]] = {}
    for step in procedure.steps:
        own = 0 if step.paused else step.budget
        before = max((best[b] for b in step.after), default=(0, []), key=lambda x: x[0])
        best[step.id] = (before[0] + own, [*before[1], step.id])
    return max(best.values(), key=lambda x: x[0])


def _digest(agencies: Mapping[AgencyCode, Agency], calendar: WorkingCalendar,
            procedures: Mapping[ProcedureCode, tuple[Procedure, ...]]) -> str:
    """SHA-256 of the canonical JSON form: formatting, comments and file layout do not count."""
    return hashlib.sha256(canonical_json(agencies, calendar, procedures).encode("utf-8")).hexdigest()


def canonical_json(agencies: Mapping[AgencyCode, Agency], calendar: WorkingCalendar,
                   procedures: Mapping[ProcedureCode, tuple[Procedure, ...]]) -> str:
    """Dates, successors and a procedure's own cut-off appear only where set: an undated rule
    set keeps the digest it had before rules had dates."""
    form = {
        "version": 1,
        "agencies": [[str(a.code), a.name, a.level.value, a.kind, str(a.parent or ""), *_dated(a)]
                     for a in sorted(agencies.values(), key=lambda a: a.code)],
        "calendar": {
            "years": list(calendar.years),
            "weekend": sorted(calendar.weekend),
            "cutoff": calendar.cutoff.isoformat("minutes") if calendar.cutoff else None,
            "timezone": str(calendar.timezone),
            "holidays": sorted([d.isoformat(), n] for d, n in calendar.holidays.items()),
            "makeup": sorted([d.isoformat(), n] for d, n in calendar.makeup_days.items()),
        },
        "procedures": [_procedure_form(p) for code in sorted(procedures) for p in procedures[code]],
    }
    return json.dumps(form, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _dated(agency: Agency) -> list[Any]:
    if agency.start is None and agency.end is None and not agency.successors:
        return []
    return [str(agency.start or ""), str(agency.end or ""),
            sorted([str(s.agency), str(s.for_ or "")] for s in agency.successors)]


def _procedure_form(p: Procedure) -> dict[str, Any]:
    form: dict[str, Any] = {
        "code": str(p.code), "name": p.name, "scope": p.scope, "budget": p.budget,
        "origins": sorted(p.origins),
        "steps": [{"id": s.id, "action": s.action, "budget": s.budget, "after": sorted(s.after),
                   "paused": s.paused, "by": str(s.by)} for s in sorted(p.steps, key=lambda s: s.id)],
    }
    dated = {"from": str(p.start) if p.start else None, "until": str(p.end) if p.end else None,
             "cutoff": p.cutoff.isoformat("minutes") if isinstance(p.cutoff, dt.time) else
             (None if p.cutoff == "calendar" else "none"),
             "replaced_by": sorted(map(str, p.replaced_by)) or None}
    form.update({k: v for k, v in dated.items() if v is not None})
    return form


class RuleBook:
    """The rule set in force. ``reload`` builds a new one beside it and swaps only when whole."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._current = load(directory)

    @property
    def current(self) -> RuleSet:
        return self._current

    def reload(self) -> RuleSet:
        """Load again; on RuleError the rules in force stay in force and the error propagates."""
        with self._lock:
            fresh = load(self.directory)
            self._current = fresh
            return fresh
