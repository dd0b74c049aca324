"""The end of a dossier with nodes as separate processes, on the embedded transport and on the real
RabbitMQ: a refusal and a withdrawal, each with one node SIGKILLed in the middle, leave every
participant with the same final state and no agency system with any file twice."""

from __future__ import annotations

import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.audit.entries import Entry
from exchange.xml import safexml
from exchange.xml.names import STATUS_NS, q
from tests.node_cluster import COMMUNE, EXE, INSURANCE, POLICE, Cluster, wait_until

NODES = (COMMUNE, POLICE, INSURANCE)


@pytest.fixture(params=["embedded", "rabbitmq"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    district = Cluster.on(request.param, tmp_path, *NODES)
    district.init(*NODES)
    for agency in NODES:
        district.start(agency)
    yield district
    district.stop_all()


def exchange(cluster: Cluster, agency: str, command: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, command, "--config", str(cluster.config(agency)), *argv],
                          capture_output=True, text=True, timeout=60, check=False)


def states(cluster: Cluster, code: str) -> dict[str, str]:
    return {agency: row["state"] for agency in NODES for row in cluster.status(agency) if row["code"] == code}


def step_state(cluster: Cluster, agency: str, code: str, step: str) -> str:
    (row,) = [row for row in cluster.status(agency) if row["code"] == code]
    return str(next(s["state"] for s in row["steps"] if s["step"] == step))


def submitted(cluster: Cluster) -> str:
    """A birth dossier submitted at the commune, ready at the police and at the insurance."""
    code = cluster.submit(1)
    wait_until(lambda: code in cluster.ready(POLICE, "residence") and code in cluster.ready(INSURANCE, "insurance"),
               60, "both branches ready")
    return code


def kill(cluster: Cluster, agency: str) -> None:
    process = cluster.processes.pop(agency)
    process.kill()
    process.wait(timeout=30)


def final_notices(cluster: Cluster, agency: str, code: str) -> list[tuple[str, str | None]]:
    """(final state, reason) of each status file ending the dossier that the agency system got."""
    found = []
    for path in cluster.delivered(agency):
        if path.name.startswith(f"status-{code}-"):
            root = safexml.parse(path.read_bytes())
            final = root.findtext(q("FinalState", STATUS_NS))
            if final:
                found.append((final, root.findtext(q("Reason", STATUS_NS))))
    return found


def delivered_twice(cluster: Cluster) -> list[str]:
    """Envelopes (by message id) and slips (by file) any node's audit log shows delivered to its
    agency system more than once."""
    twice = []
    for agency in NODES:
        with sqlite3.connect(cluster.root / "nodes" / agency / "state" / "node.db") as conn:
            rows = conn.execute("SELECT data FROM audit_entries WHERE event = 'delivered'").fetchall()
        entries = [Entry.decode(bytes(data))[1] for (data,) in rows]
        counts = Counter(e.message_id or e.detail.get("file") for e in entries)
        twice += [f"{agency}: {key}" for key, n in counts.items() if n > 1]
    return twice


def test_refusal_with_a_node_killed(cluster: Cluster) -> None:
    """The police refuse while the insurance node is SIGKILLed; after its restart every node holds
    the dossier refused, the insurance step is cancelled, and the commune got the reason once."""
    code = submitted(cluster)
    kill(cluster, INSURANCE)
    reason = "Người khai không thường trú tại xã"
    missing = exchange(cluster, POLICE, "done", "--dossier", code, "--step", "residence", "--result", "refused")
    assert missing.returncode == 1
    assert "reason" in missing.stderr
    refused = exchange(cluster, POLICE, "done", "--dossier", code, "--step", "residence", "--result", "refused",
                       "--reason", reason)
    assert refused.returncode == 0, refused.stderr
    wait_until(lambda: states(cluster, code).get(COMMUNE) == "refused", 60, "the refusal at the commune")
    cluster.start(INSURANCE)
    wait_until(lambda: set(states(cluster, code).values()) == {"refused"}, 60, "every node refused")
    assert step_state(cluster, INSURANCE, code, "insurance") == "cancelled"
    assert step_state(cluster, COMMUNE, code, "return") == "cancelled"
    wait_until(lambda: bool(final_notices(cluster, INSURANCE, code)), 30, "the notice delivered at the insurance")
    assert final_notices(cluster, COMMUNE, code) == [("refused", reason)]
    assert final_notices(cluster, INSURANCE, code) == [("refused", reason)]
    late = exchange(cluster, INSURANCE, "done", "--dossier", code, "--step", "insurance")
    assert late.returncode == 1
    assert "cancelled" in late.stderr
    assert delivered_twice(cluster) == []


def test_withdrawal_with_a_node_killed(cluster: Cluster) -> None:
    """The commune withdraws after the police finished, the police node SIGKILLed meanwhile; after its
    restart every node holds the dossier withdrawn, the police step stays done, the insurance step
    is cancelled, and no agency system got any file twice."""
    code = submitted(cluster)
    assert exchange(cluster, POLICE, "done", "--dossier", code, "--step", "residence").returncode == 0
    wait_until(lambda: step_state(cluster, COMMUNE, code, "residence") == "done", 60, "the police's hand-off")
    kill(cluster, POLICE)
    withdrawn = exchange(cluster, COMMUNE, "withdraw", "--dossier", code, "--reason", "Người nộp rút hồ sơ")
    assert withdrawn.returncode == 0, withdrawn.stderr
    wait_until(lambda: states(cluster, code).get(INSURANCE) == "withdrawn", 60, "the withdrawal at the insurance")
    cluster.start(POLICE)
    wait_until(lambda: set(states(cluster, code).values()) == {"withdrawn"}, 60, "every node withdrawn")
    assert step_state(cluster, POLICE, code, "residence") == "done"
    assert step_state(cluster, INSURANCE, code, "insurance") == "cancelled"
    wait_until(lambda: bool(final_notices(cluster, POLICE, code)), 30, "the notice delivered at the police")
    assert final_notices(cluster, POLICE, code) == [("withdrawn", "Người nộp rút hồ sơ")]
    again = exchange(cluster, COMMUNE, "withdraw", "--dossier", code, "--reason", "again")
    assert again.returncode == 1
    assert "already withdrawn" in again.stderr
    assert delivered_twice(cluster) == []


def transfers(cluster: Cluster, agency: str, code: str) -> list[Path]:
    return [path for path in cluster.delivered(agency) if path.name.startswith(f"transfer-{code}-")]


def test_supplement_with_nodes_killed(cluster: Cluster, tmp_path: Path) -> None:
    """The police ask for more documents and are SIGKILLed; the commune supplements and is SIGKILLed
    right after; once both are back the police step is ready again with the new document, delivered
    once, and the dossier completes everywhere."""
    code = submitted(cluster)
    asked = exchange(cluster, POLICE, "done", "--dossier", code, "--step", "residence", "--result", "supplement",
                     "--reason", "Thiếu giấy chứng nhận kết hôn")
    assert asked.returncode == 0, asked.stderr
    kill(cluster, POLICE)
    wait_until(lambda: states(cluster, code).get(COMMUNE) == "supplement-requested", 60, "the request at the commune")
    scan = tmp_path / "giay-chung-nhan-ket-hon.pdf"
    scan.write_bytes(b"%PDF-1.7 ban sao")
    added = exchange(cluster, COMMUNE, "supplement", "--dossier", code, str(scan))
    assert added.returncode == 0, added.stderr
    kill(cluster, COMMUNE)
    cluster.start(COMMUNE)
    cluster.start(POLICE)
    wait_until(lambda: code in cluster.ready(POLICE, "residence"), 60, "the police step ready again")
    assert len(transfers(cluster, POLICE, code)) == 2  # the dossier, then once again with the supplement
    assert any(b"giay-chung-nhan-ket-hon.pdf" in path.read_bytes() for path in transfers(cluster, POLICE, code))
    cluster.done(POLICE, code, "residence")
    cluster.done(INSURANCE, code, "insurance")
    wait_until(lambda: code in cluster.ready(COMMUNE, "return"), 60, "the return step ready")
    cluster.done(COMMUNE, code, "return")
    wait_until(lambda: set(states(cluster, code).values()) == {"completed"}, 60, "every node completed")
    assert delivered_twice(cluster) == []


def test_a_join_delivers_once_with_the_origin_killed(cluster: Cluster) -> None:
    """Both branches finish while the commune (where they meet) is SIGKILLed between them: once it is
    back its agency system has the dossier once, with both branches' control rows."""
    code = submitted(cluster)
    cluster.done(POLICE, code, "residence")
    wait_until(lambda: step_state(cluster, COMMUNE, code, "residence") == "done", 60, "the police's hand-off")
    kill(cluster, COMMUNE)
    cluster.done(INSURANCE, code, "insurance")
    cluster.start(COMMUNE)
    wait_until(lambda: code in cluster.ready(COMMUNE, "return"), 60, "the return step ready")
    wait_until(lambda: bool(transfers(cluster, COMMUNE, code)), 30, "the delivery at the commune")
    (delivered,) = transfers(cluster, COMMUNE, code)
    rows = delivered.read_bytes()
    assert POLICE.encode() in rows
    assert INSURANCE.encode() in rows
    assert delivered_twice(cluster) == []
