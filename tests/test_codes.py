"""Agency, dossier and procedure codes: accepted forms, parts, and refusals that explain."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.errors import InvalidCode


@pytest.mark.parametrize(("code", "level", "parent"), [
    ("000.00.00.H49", 1, None),
    ("000.00.00.G22", 1, None),
    ("000.00.10.H49", 2, "000.00.00.H49"),
    ("000.03.10.H49", 3, "000.00.10.H49"),
    ("002.03.10.H49", 4, "000.03.10.H49"),
])
def test_agency_level_and_parent(code: str, level: int, parent: str | None) -> None:
    """An agency code knows its QCVN 102 level and its structural parent."""
    agency = AgencyCode(code)
    assert agency.level == level
    assert (str(agency.parent) if agency.parent else None) == parent
    assert agency.root == code[-3:]


@pytest.mark.parametrize("bad", ["", "000.00.10", "000.00.10.X49", "00.00.10.H49", "000.00.10.h49",
                                 " 000.00.10.H49", "000.00.10.H49\n", "000.0a.10.H49"])
def test_agency_refusal_quotes_value_and_form(bad: str) -> None:
    """A malformed agency code is refused with the value and the expected form in the message."""
    with pytest.raises(InvalidCode) as info:
        AgencyCode(bad)
    assert repr(bad) in str(info.value)
    assert "V1V2V3.Z1Z2.Y1Y2.Xnn" in str(info.value)


def test_dossier_code_parts() -> None:
    """A dossier code splits into the receiving agency, the day and the sequence."""
    code = DossierCode("000.00.14.H20-200703-0002")
    assert code.agency == AgencyCode("000.00.14.H20")
    assert code.day == dt.date(2020, 7, 3)
    assert code.sequence == 2
    assert DossierCode.build(code.agency, code.day, 2) == code


@pytest.mark.parametrize("bad", ["000.00.14.H20-200703-02", "000.00.14.H20-201303-0002",
                                 "000.00.14.H20-200230-0002", "000.00.14.X20-200703-0002",
                                 "000.00.14.H20-200703-0000", "000.00.14.H20_200703_0002"])
def test_dossier_code_refusal(bad: str) -> None:
    """Bad dates, sequences and agency parts are refused, quoting the form expected."""
    with pytest.raises(InvalidCode, match="<agency code>-<yymmdd>-<NNNN>"):
        DossierCode(bad)


@pytest.mark.parametrize("good", ["2.000986", "1.012753.H19", "1.001193", "3.000722"])
def test_procedure_codes(good: str) -> None:
    """National procedure codes and their local variants are accepted."""
    assert str(ProcedureCode(good)) == good


@pytest.mark.parametrize("bad", ["2000986", "2.00098", "2.000986.X19", "12.000986", "2.000986."])
def test_procedure_refusal(bad: str) -> None:
    """Malformed procedure codes are refused with the expected form."""
    with pytest.raises(InvalidCode, match=r"d\.dddddd"):
        ProcedureCode(bad)


@given(v=st.integers(0, 999), z=st.integers(0, 99), y=st.integers(0, 99),
       kind=st.sampled_from("GH"), n=st.integers(0, 99))
def test_every_well_formed_agency_code_has_a_parent_chain_to_level_one(
        v: int, z: int, y: int, kind: str, n: int) -> None:
    """Following parents from any code reaches a level-1 body, one level at a time."""
    agency: AgencyCode | None = AgencyCode(f"{v:03d}.{z:02d}.{y:02d}.{kind}{n:02d}")
    levels = []
    while agency is not None:
        levels.append(agency.level)
        agency = agency.parent
    assert levels[-1] == 1
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False))
