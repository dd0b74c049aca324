"""The one clock: the current moment, and moments written and read as text.

Moments are aware and in UTC everywhere inside the node; text is ISO 8601 with a ``Z`` and
millisecond precision (XML dateTime, audit entries, the database), and reading accepts any
offset. Deadlines in working days are dates in the rules' time zone: see ``rules.calendar``.
"""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    """The current moment, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def utc(moment: dt.datetime) -> str:
    """``moment`` as text: UTC, millisecond precision, ``Z``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(text: str) -> dt.datetime:
    """A moment read from ISO 8601 text (``Z`` or an offset), in UTC; ValueError if it is not one."""
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(dt.UTC)
