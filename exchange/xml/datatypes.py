"""XML Schema date and time values read from documents: every lexical form the schema allows.

``xs:dateTime`` and ``xs:date`` allow more than ``datetime.fromisoformat`` reads: surrounding
whitespace (the types collapse it), ``24:00:00`` for the midnight that ends a day, fractional
seconds of any length, a zone on a date, years of more than four digits and negative years. The
node reads every XML date and time through these two functions; ``exchange.clock`` stays for
the node's own text.

What Python cannot hold is refused with a ValueError that says so: a year outside 0001-9999
(schema-valid, never a real dossier's). Fractional seconds beyond microseconds are truncated.
A date's zone is checked and then ignored: the day is the one written.
"""

from __future__ import annotations

import datetime as dt
import re

_WHITESPACE = " \t\r\n"
"""XML whitespace; ``whiteSpace="collapse"`` removes it at both ends."""

_YEAR = r"(?P<year>-?(?:[1-9][0-9]{3,}|0[0-9]{3}))"
_DATE = _YEAR + r"-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
_ZONE = r"(?P<zone>Z|(?P<sign>[+-])(?P<zh>[0-9]{2}):(?P<zm>[0-9]{2}))?"
_DATETIME_RE = re.compile(f"{_DATE}T{_TIME}{_ZONE}")
_DATE_RE = re.compile(f"{_DATE}{_ZONE}")

DATETIME_FORM = "YYYY-MM-DDThh:mm:ss[.s+](Z|+hh:mm|-hh:mm)"
DATE_FORM = "YYYY-MM-DD[Z|+hh:mm|-hh:mm]"
MAX_ZONE = dt.timedelta(hours=14)

_OURS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")
"""The form every node writes (``clock.utc``): read by ``fromisoformat`` on the hot path."""


def parse_datetime(text: str) -> dt.datetime:
    """An ``xs:dateTime`` with a zone, as an aware moment in UTC; ValueError if it is not one."""
    if _OURS_RE.fullmatch(text):
        try:
            return dt.datetime.fromisoformat(text)  # a Z reads as UTC
        except ValueError:
            pass  # 24:00:00, a year 0000, a 30 February: the general reading says which
    found = _DATETIME_RE.fullmatch(text.strip(_WHITESPACE))
    if found is None:
        raise ValueError(f"{_shown(text)} is not an xs:dateTime ({DATETIME_FORM})")
    zone = _zone(found, text)
    if zone is None:
        raise ValueError(f"{_shown(text)} has no time zone (end it with Z or an offset such as +07:00)")
    day = _day(found, text)
    hour, minute, second = int(found["hour"]), int(found["minute"]), int(found["second"])
    fraction = found["fraction"] or ""
    if hour == 24 and minute == second == 0 and not fraction.strip("0"):
        return _utc(dt.datetime.combine(day, dt.time(0), zone), dt.timedelta(days=1), text)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{_shown(text)}: {hour:02}:{minute:02}:{second:02} is not a time of day")
    micro = int((fraction + "000000")[:6])
    return _utc(dt.datetime.combine(day, dt.time(hour, minute, second, micro), zone), dt.timedelta(), text)


def parse_date(text: str) -> dt.date:
    """An ``xs:date`` as the day written (its zone, if any, checked and ignored); ValueError if
    it is not one."""
    found = _DATE_RE.fullmatch(text.strip(_WHITESPACE))
    if found is None:
        raise ValueError(f"{_shown(text)} is not an xs:date ({DATE_FORM})")
    _zone(found, text)
    return _day(found, text)


def _day(found: re.Match[str], text: str) -> dt.date:
    year = int(found["year"])
    if not 1 <= year <= 9999:
        raise ValueError(f"{_shown(text)}: the year {year} is outside 0001-9999, which is not supported")
    try:
        return dt.date(year, int(found["month"]), int(found["day"]))
    except ValueError as exc:
        raise ValueError(f"{_shown(text)}: {exc}") from None


def _zone(found: re.Match[str], text: str) -> dt.tzinfo | None:
    if found["zone"] is None:
        return None
    if found["zone"] == "Z":
        return dt.UTC
    hours, minutes = int(found["zh"]), int(found["zm"])
    offset = dt.timedelta(hours=hours, minutes=minutes)
    if minutes > 59 or offset > MAX_ZONE:
        raise ValueError(f"{_shown(text)}: the zone {found['zone']} is outside -14:00 to +14:00")
    return dt.timezone(-offset if found["sign"] == "-" else offset)


def _utc(moment: dt.datetime, later: dt.timedelta, text: str) -> dt.datetime:
    try:
        return (moment + later).astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(f"{_shown(text)} is outside the years 0001-9999 in UTC, which is not supported") from None


def _shown(text: str) -> str:
    """The value as quoted in a message: a hostile document's value can be long."""
    return repr(text if len(text) <= 60 else text[:60] + "...")
