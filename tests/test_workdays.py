"""Working-day arithmetic: weekends, holidays, Tết, make-up Saturdays and the 15:00 cut-off."""

from __future__ import annotations

import datetime as dt

import pytest

from exchange.errors import RoutingError
from exchange.rules.calendar import WorkingCalendar

ICT = dt.timezone(dt.timedelta(hours=7))
TET_2026 = {dt.date(2026, 2, 14) + dt.timedelta(days=i): "Tết" for i in range(9)}
CALENDAR = WorkingCalendar(
    years=(2025, 2026),
    holidays={dt.date(2025, 4, 30): "30/4", dt.date(2025, 5, 1): "1/5", dt.date(2025, 5, 2): "bù",
              dt.date(2026, 1, 1): "Tết Dương lịch", **TET_2026},
    makeup_days={dt.date(2025, 4, 26): "làm bù"},
)


def at(year: int, month: int, day: int, hour: int = 9, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=ICT)


@pytest.mark.parametrize(("received", "budget", "due"), [
    (at(2026, 3, 2), 0, dt.date(2026, 3, 2)),             # Monday morning, same day
    (at(2026, 3, 2), 3, dt.date(2026, 3, 5)),             # Monday + 3 = Thursday
    (at(2026, 3, 5), 3, dt.date(2026, 3, 10)),            # Thursday + 3 crosses the weekend
    (at(2026, 3, 7), 1, dt.date(2026, 3, 10)),            # Saturday counts from Monday
    (at(2026, 3, 2, 14, 59), 0, dt.date(2026, 3, 2)),     # just before the cut-off
    (at(2026, 3, 2, 15, 0), 0, dt.date(2026, 3, 3)),      # at the cut-off: the next working day
    (at(2026, 3, 6, 16, 30), 1, dt.date(2026, 3, 10)),    # Friday afternoon: Monday, then Tuesday
    (at(2025, 12, 31, 16, 0), 0, dt.date(2026, 1, 2)),    # New Year's Eve after hours, across years
    (at(2026, 2, 12, 10), 2, dt.date(2026, 2, 23)),       # Thursday before Tết: 13th, then 23rd
    (at(2026, 2, 16), 0, dt.date(2026, 2, 23)),           # received during Tết
    (at(2025, 4, 25), 1, dt.date(2025, 4, 26)),           # the make-up Saturday is a working day
    (at(2025, 4, 29), 1, dt.date(2025, 5, 5)),            # 30/4 to 2/5 off
])
def test_due_dates(received: dt.datetime, budget: int, due: dt.date) -> None:
    """Due dates count working days from the first counted day, skipping days off."""
    assert CALENDAR.due(received, budget) == due


def test_other_zone_is_converted_to_local_time() -> None:
    """A UTC receipt time of 08:30Z is 15:30 in Hanoi: after the cut-off."""
    received = dt.datetime(2026, 3, 2, 8, 30, tzinfo=dt.UTC)
    assert CALENDAR.first_counted_day(received) == dt.date(2026, 3, 3)


def test_naive_time_is_refused() -> None:
    """A time without a zone is ambiguous and refused with advice."""
    with pytest.raises(RoutingError, match="no zone"):
        CALENDAR.due(dt.datetime(2026, 3, 2, 9), 1)


def test_year_outside_calendar_is_refused() -> None:
    """A date the calendar does not cover is refused rather than guessed."""
    with pytest.raises(RoutingError, match="add the public holidays of 2027"):
        CALENDAR.due(at(2027, 1, 4), 1)


def test_counting_past_the_end_is_refused() -> None:
    """A budget that runs past the last covered year is refused."""
    with pytest.raises(RoutingError, match="past the end"):
        CALENDAR.due(at(2026, 12, 30), 5)


def test_working_days_between() -> None:
    """Counting working days across Tết gives the business days only."""
    assert CALENDAR.working_days_between(dt.date(2026, 2, 12), dt.date(2026, 2, 24)) == 3
