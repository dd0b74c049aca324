"""A short chaos soak on each transport (tests/soak.py): node processes killed and stopped, the
private broker stopped and killed, and afterwards every invariant of the backbone holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rabbit_node import RabbitNode
from tests.soak import Plan, Soak

CI_PLAN = Plan(dossiers=60, fault_seconds=25.0, fault_every=(1.0, 2.5), drain_seconds=150.0)


@pytest.mark.timeout(420)
def test_soak_on_the_embedded_transport(tmp_path: Path) -> None:
    """Nodes SIGKILLed and SIGSTOPped (a stopped node may hold the shared file's lock) lose
    nothing, deliver nothing twice, and leave true, reconcilable audit logs."""
    figures = Soak(tmp_path, CI_PLAN).run()
    print(figures.report())
    assert figures.problems == [], figures.report()
    assert sum(figures.faults.values()) >= 5


@pytest.mark.timeout(420)
def test_soak_on_rabbitmq(tmp_path: Path, private_rabbit: RabbitNode) -> None:
    """The same on a private RabbitMQ node that is also stopped and killed -9 under the nodes."""
    figures = Soak(tmp_path, CI_PLAN, private_rabbit).run()
    print(figures.report())
    assert figures.problems == [], figures.report()
    assert sum(figures.faults.values()) >= 5
