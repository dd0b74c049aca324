"""Identifiers as value objects, validated once at construction.

- Agency identifier, QCVN 102:2016/BTTTT: ``V1V2V3.Z1Z2.Y1Y2.Xnn`` (``000.00.10.H49``).
  The last group is level 1 (``G``nn a central body, ``H``nn a province), ``Y1Y2`` level 2,
  ``Z1Z2`` level 3, ``V1V2V3`` level 4. The structural parent zeroes the lowest non-zero
  group; a routing directory may still declare a different parent, and it wins there.
- Dossier code: ``<agency code>-<yymmdd>-<NNNN>`` (``000.00.14.H20-200703-0002``).
- National procedure code: ``d.dddddd`` with an optional local suffix (``1.012753.H19``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from exchange.errors import InvalidCode

_AGENCY = re.compile(r"(\d{3})\.(\d{2})\.(\d{2})\.([GH]\d{2})")
_DOSSIER = re.compile(r"(.+)-(\d{6})-(\d{4})")
_PROCEDURE = re.compile(r"\d\.\d{6}(?:\.[GH]\d{2})?")

AGENCY_FORM = "V1V2V3.Z1Z2.Y1Y2.Xnn, for example 000.00.10.H49"
DOSSIER_FORM = "<agency code>-<yymmdd>-<NNNN>, for example 000.00.10.H49-251103-0042"
PROCEDURE_FORM = "d.dddddd or d.dddddd.Xnn, for example 2.000986 or 1.012753.H19"


def _yymmdd(text: str) -> dt.date:
    # strptime costs more than the rest of an envelope's header; dossier codes are read often.
    return dt.date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))


def _refuse(kind: str, value: object, form: str) -> InvalidCode:
    return InvalidCode(f"invalid {kind} {value!r}: expected {form}")


@dataclass(frozen=True, order=True, slots=True)
class AgencyCode:
    """An agency identifier ("mã định danh") of QCVN 102:2016."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not _AGENCY.fullmatch(self.value):
            raise _refuse("agency code", self.value, AGENCY_FORM)

    @classmethod
    def parse(cls, value: str) -> AgencyCode:
        return cls(value.strip())

    def _groups(self) -> tuple[str, str, str, str]:
        v, z, y, x = self.value.split(".")
        return v, z, y, x

    @property
    def level(self) -> int:
        """1 for a province or central body, down to 4 for a unit under a level-3 unit."""
        v, z, y, _ = self._groups()
        if int(v):
            return 4
        if int(z):
            return 3
        return 2 if int(y) else 1

    @property
    def root(self) -> str:
        """The level-1 group, such as ``H49`` for Quảng Ninh."""
        return self._groups()[3]

    @property
    def parent(self) -> AgencyCode | None:
        """The structural parent, or ``None`` for a level-1 body."""
        v, z, y, x = self._groups()
        if int(v):
            return AgencyCode(f"000.{z}.{y}.{x}")
        if int(z):
            return AgencyCode(f"000.00.{y}.{x}")
        if int(y):
            return AgencyCode(f"000.00.00.{x}")
        return None

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, order=True, slots=True)
class DossierCode:
    """A dossier code ("mã hồ sơ"): receiving agency, receipt date, daily sequence."""

    value: str

    def __post_init__(self) -> None:
        match = _DOSSIER.fullmatch(self.value) if isinstance(self.value, str) else None
        if match is None:
            raise _refuse("dossier code", self.value, DOSSIER_FORM)
        try:
            AgencyCode(match.group(1))
            _yymmdd(match.group(2))
        except (InvalidCode, ValueError):
            raise _refuse("dossier code", self.value, DOSSIER_FORM) from None
        if int(match.group(3)) == 0:
            raise _refuse("dossier code", self.value, DOSSIER_FORM + " (sequence from 0001)")

    @classmethod
    def build(cls, agency: AgencyCode, day: dt.date, sequence: int) -> DossierCode:
        return cls(f"{agency.value}-{day:%y%m%d}-{sequence:04d}")

    @property
    def agency(self) -> AgencyCode:
        return AgencyCode(self.value.rsplit("-", 2)[0])

    @property
    def day(self) -> dt.date:
        return _yymmdd(self.value.rsplit("-", 2)[1])

    @property
    def sequence(self) -> int:
        return int(self.value.rsplit("-", 1)[1])

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, order=True, slots=True)
class ProcedureCode:
    """A national administrative-procedure code, possibly with a local suffix."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not _PROCEDURE.fullmatch(self.value):
            raise _refuse("procedure code", self.value, PROCEDURE_FORM)

    @property
    def local_to(self) -> str | None:
        """The province or central body of a local variant, such as ``H19``."""
        parts = self.value.split(".")
        return parts[2] if len(parts) == 3 else None

    def __str__(self) -> str:
        return self.value
