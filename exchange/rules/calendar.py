"""Working-day arithmetic on a configured calendar: weekends, public holidays, make-up days.

Deadlines are counted in working days. A dossier received on a working day before the
afternoon cut-off counts from that day (day 0); received later, or on a day off, it counts
from the next working day. A budget of ``n`` working days ends at the close of the ``n``-th
working day after the first counted day (``n = 0``: the same day).

Working days are precomputed into a sorted table for the years the calendar covers, so adding
``n`` working days is two lookups, not a walk over the days: the router runs this for every
decision.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from exchange.errors import RoutingError

Cutoff = dt.time | None | Literal["calendar"]
"""A procedure's afternoon cut-off: a time, none (the whole day counts), or the calendar's."""
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class WorkingCalendar:
    """The working calendar of a province: which days count, and when a day stops counting."""

    years: tuple[int, ...]
    weekend: frozenset[int] = frozenset({5, 6})
    holidays: Mapping[dt.date, str] = field(default_factory=dict)
    makeup_days: Mapping[dt.date, str] = field(default_factory=dict)
    """Weekend days declared working days, to make up for a bridged holiday."""
    cutoff: dt.time | None = dt.time(15, 0)
    """The cut-off of procedures that name none; None: a day counts whenever the dossier came."""
    timezone: dt.tzinfo = dt.timezone(dt.timedelta(hours=7))
    _days: tuple[dt.date, ...] = field(init=False, repr=False, compare=False)
    _next: dict[dt.date, int] = field(init=False, repr=False, compare=False)
    """For every covered day, the index in ``_days`` of that day or the next working day."""

    def __post_init__(self) -> None:
        every = _all_days(self.years)
        days = tuple(d for d in every if self._works(d))
        object.__setattr__(self, "_days", days)
        object.__setattr__(self, "_next", {d: bisect.bisect_left(days, d) for d in every})

    def _works(self, day: dt.date) -> bool:
        if day in self.makeup_days:
            return True
        return day.weekday() not in self.weekend and day not in self.holidays

    def _index(self, day: dt.date) -> int:
        index = self._next.get(day)
        if index is None:
            span = f"{self.years[0]}–{self.years[-1]}" if self.years else "no year"
            raise RoutingError(f"the working calendar covers {span}, not {day.isoformat()}: "
                               f"add the public holidays of {day.year} to the rules")
        return index

    def is_working_day(self, day: dt.date) -> bool:
        self._index(day)
        return self._works(day)

    def local(self, moment: dt.datetime) -> dt.datetime:
        if moment.tzinfo is None:
            raise RoutingError(f"time {moment.isoformat()} has no zone; give an offset such as +07:00")
        return moment.astimezone(self.timezone)

    def first_counted_day(self, moment: dt.datetime, cutoff: Cutoff = "calendar") -> dt.date:
        """The working day from which a deadline counts, for something received at ``moment``
        under a procedure whose afternoon ``cutoff`` is given (or is the calendar's)."""
        local = self.local(moment)
        day = local.date()
        index = self._index(day)  # that day if it works, else the next one
        limit = self.cutoff if cutoff == "calendar" else cutoff
        if index < len(self._days) and self._days[index] == day and limit is not None and local.time() >= limit:
            index += 1
        return self._at(index, day)

    def add(self, day: dt.date, working_days: int) -> dt.date:
        """The ``working_days``-th working day after working day ``day`` (or the next one)."""
        return self._at(self._index(day) + working_days, day)

    def due(self, moment: dt.datetime, working_days: int, cutoff: Cutoff = "calendar") -> dt.date:
        """The due date of something received at ``moment`` with a budget of ``working_days``."""
        return self.add(self.first_counted_day(moment, cutoff), working_days)

    def working_days_between(self, start: dt.date, end: dt.date) -> int:
        """How many working days lie after ``start`` up to and including ``end`` (may be < 0)."""
        self._index(start)
        self._index(end)
        return bisect.bisect_right(self._days, end) - bisect.bisect_right(self._days, start)

    def _at(self, index: int, asked: dt.date) -> dt.date:
        if index >= len(self._days):
            raise RoutingError(f"counting from {asked.isoformat()} runs past the end of the working "
                               f"calendar ({self.years[-1]}): add the next year's holidays")
        return self._days[index]


def _all_days(years: tuple[int, ...]) -> list[dt.date]:
    if not years:
        return []
    day, end = dt.date(years[0], 1, 1), dt.date(years[-1], 12, 31)
    days = []
    while day <= end:
        days.append(day)
        day += dt.timedelta(days=1)
    return days
