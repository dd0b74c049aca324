"""The agencies and procedure the tests use, defined once, as in tests/rules/seed-2019/agencies.xml (the seed's
2019 district, undated: in force whatever the day the tests run).

Node processes and the command line take codes as text: ``str(COMMUNE)``.
"""

from __future__ import annotations

from exchange.codes import AgencyCode, ProcedureCode

DAM_HA_TOWN = AgencyCode("000.01.10.H49")
"""Ủy ban nhân dân thị trấn Đầm Hà: the sender of the single-envelope tests."""
DUC_YEN = AgencyCode("000.04.10.H49")
"""Ủy ban nhân dân xã Dực Yên: the commune whose node the process tests run."""
QUANG_AN = AgencyCode("000.05.10.H49")
DAM_HA_CENTRE = AgencyCode("000.20.10.H49")
DAM_HA_POLICE = AgencyCode("000.30.10.H49")
DAM_HA_INSURANCE = AgencyCode("000.31.10.H49")
HAI_HA_POLICE = AgencyCode("000.30.11.H49")
QUANG_LONG = AgencyCode("000.02.11.H49")

COMMUNE = DUC_YEN
POLICE = DAM_HA_POLICE
INSURANCE = DAM_HA_INSURANCE

BIRTH = ProcedureCode("2.000986")
"""Đăng ký khai sinh: commune → police and social insurance → back to the commune."""
