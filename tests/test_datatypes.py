"""XML date and time values: every lexical form of xs:dateTime and xs:date reads back to the
moment or day it was written from, and what the schema would refuse (or Python cannot hold) is a
ValueError that says why."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from exchange.xml.datatypes import parse_date, parse_datetime

MOMENTS = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 30))
ZONES = st.integers(-14 * 60, 14 * 60).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
SPACE = st.sampled_from(["", " ", "\t", "\n", "\r\n  "])

XSD = etree.XMLSchema(etree.fromstring(
    b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="t" type="xs:dateTime"/>'
    b'<xs:element name="d" type="xs:date"/></xs:schema>'))


def _zone_text(zone: dt.tzinfo, utc_as_z: bool) -> str:
    offset = zone.utcoffset(None)
    assert offset is not None
    if offset == dt.timedelta() and utc_as_z:
        return "Z"
    sign = "-" if offset < dt.timedelta() else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02}:{minutes % 60:02}"


@given(moment=MOMENTS, zone=ZONES, extra_digits=st.integers(0, 12), utc_as_z=st.booleans(),
       before=SPACE, after=SPACE)
def test_every_datetime_form_round_trips(moment: dt.datetime, zone: dt.tzinfo, extra_digits: int,
                                         utc_as_z: bool, before: str, after: str) -> None:
    """A moment written as xs:dateTime in any zone, with fractional seconds of any length and
    surrounding whitespace, reads back as the same moment in UTC."""
    local = moment.replace(tzinfo=zone)
    fraction = f".{local.microsecond:06}{'0' * extra_digits}" if local.microsecond or extra_digits else ""
    text = f"{before}{local.year:04}-{local:%m-%dT%H:%M:%S}{fraction}{_zone_text(zone, utc_as_z)}{after}"
    assert parse_datetime(text) == local.astimezone(dt.UTC)


@given(day=st.dates(min_value=dt.date(2, 1, 1), max_value=dt.date(9998, 12, 30)), zone=ZONES)
def test_midnight_at_24_is_the_next_day(day: dt.date, zone: dt.tzinfo) -> None:
    """24:00:00 is the midnight that ends the day: 00:00:00 of the next."""
    text = f"{day.isoformat()}T24:00:00.000{_zone_text(zone, True)}"
    assert XSD.validate(etree.fromstring(f"<t>{text}</t>"))
    assert parse_datetime(text) == dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)


@given(day=st.dates(min_value=dt.date(1, 1, 1)), zone=st.none() | ZONES, before=SPACE, after=SPACE)
def test_every_date_form_reads_the_day_written(day: dt.date, zone: dt.tzinfo | None, before: str,
                                               after: str) -> None:
    """A date, with or without a zone and inside whitespace, reads as the day written."""
    text = f"{before}{day.isoformat()}{_zone_text(zone, True) if zone else ''}{after}"
    assert parse_date(text) == day


@pytest.mark.parametrize("text", [
    "2025-01-01T10:00:00",            # no zone: our documents require one
    "+2025-01-01T10:00:00Z",          # a leading plus is not xs:dateTime
    "0000-01-01T00:00:00Z",           # there is no year zero
    "12025-01-01T00:00:00Z",          # schema-valid, beyond Python
    "-0001-01-01T00:00:00Z",
    "9999-12-31T23:00:00-14:00",      # beyond Python once in UTC
    "2025-01-01T24:00:01Z",
    "2025-01-01T23:59:60Z",
    "2025-02-29T10:00:00Z",
    "2025-01-01T10:00:00+14:01",
    "2025-01-01T10:00:00+0700",
    "2025-01-01T10:00Z",
    "2025-01-01 10:00:00Z",
    "2025-01-01T10:00:00.Z",
    "2025-01-01T10:00:00z",
    "२०२५-01-01T10:00:00Z",           # digits, but not ASCII ones
    "",
])
def test_what_is_not_a_datetime_is_a_value_error(text: str) -> None:
    """Text that is not an xs:dateTime with a zone, or that Python cannot hold, is a ValueError."""
    with pytest.raises(ValueError, match="xs:dateTime|zone|year|time of day|day is out of range|0001-9999"):
        parse_datetime(text)


@pytest.mark.parametrize("text", ["2025-1-01", "+2025-01-01", "0000-01-01", "10000-01-01", "2025-01-01z",
                                  "2025-01-01+15:00", "2025/01/01", "2025-01-01T00:00:00Z"])
def test_what_is_not_a_date_is_a_value_error(text: str) -> None:
    """Text that is not an xs:date, or a year Python cannot hold, is a ValueError."""
    with pytest.raises(ValueError, match=r"xs:date|zone|year"):
        parse_date(text)


@pytest.mark.parametrize("text", ["2025-01-01T10:00:00.123456789Z", "2024-02-29T24:00:00+14:00",
                                  "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_schema_and_parser_agree_on_edge_forms(text: str) -> None:
    """Edge forms that libxml2 accepts as xs:dateTime are read, not refused."""
    assert XSD.validate(etree.fromstring(f"<t>{text}</t>"))
    assert parse_datetime(text).tzinfo is dt.UTC
