"""Audit verdicts that mean something: verify tells apart what peers vouch for, what only the
node's own checkpoints cover and what nothing covers; a history rewritten by someone with the
node's files no longer "holds", and a peer's copy shows the fork."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from exchange.audit.checkpoints import Checkpointer, NoteSigner, origin_for
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.audit.sources import BundleSource
from exchange.audit.witness import Witness
from exchange.clock import now
from exchange.envelope import pki
from exchange.store import audit as rows
from tests.agencies import COMMUNE, POLICE
from tests.audit_helpers import Node, filled, make_node, raw, run, transfer

ORIGIN = origin_for(str(COMMUNE))


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca", "Witness CA")


@pytest.fixture
def commune(tmp_path: Path, ca: pki.CertificateAuthority) -> Node:
    """The audited node: 25 entries, checkpoints at 9, 17 and 25."""
    return filled(make_node(tmp_path / "commune", ca, str(COMMUNE)), 24, checkpoint_every=8)


@pytest.fixture
def police(tmp_path: Path, ca: pki.CertificateAuthority, commune: Node) -> Node:
    """A peer that kept every checkpoint the commune showed it (as receipts carry them)."""
    police = make_node(tmp_path / "police", ca, str(POLICE))
    witness = Witness(police.log)
    with police.conn:
        for note in rows.checkpoint_notes(commune.conn):
            witness.observe(note, commune.signer.verifier)
    police.checkpoint()
    return police


def verify(capsys: pytest.CaptureFixture[str], node: Node, *extra: str | Path) -> tuple[int, str, str]:
    return run(capsys, "audit", "verify", node.database, "--cert", node.cert_file, *extra)


def rewrite(node: Node, index: int, *, resign: NoteSigner | None = None) -> None:
    """What an attacker with the node's files does: drop the triggers, rewrite one entry, recompute
    the tree with the project's own code and delete (or re-sign) the checkpoints."""
    node.conn.close()
    conn = raw(node.database)
    entries = [Entry.decode(data)[1] for _, data in rows.entries(conn)]
    entries[index] = dataclasses.replace(entries[index], message_id="forged")
    with conn:
        for table in ("audit_entries", "audit_nodes", "audit_checkpoints"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        log = AuditLog(conn, node.agency)
        log.append_many(entries)
    if resign is not None:
        assert Checkpointer(log, resign).make() is not None
    conn.close()


def test_a_checkpoint_a_peer_holds_vouches_for_the_entries(commune: Node, police: Node,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Entries under a checkpoint the peer's database holds are reported as witnessed by peers."""
    code, out, _ = verify(capsys, commune, "--peer", police.database)
    assert code == 0
    assert f"witnessed by peers:   25 entries (0..24) (held by {POLICE})" in out
    assert "own checkpoints only: 0 entries" in out
    assert "holds" in out


def test_without_peers_the_entries_rest_on_the_nodes_own_checkpoints(commune: Node,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Without --peer, verify still holds but says that only the node's own checkpoints cover the entries."""
    code, out, _ = verify(capsys, commune)
    assert code == 0
    assert "own checkpoints only: 25 entries (0..24)" in out
    assert "rest on this node's own checkpoints only" in out


def test_a_rewritten_history_without_checkpoints_does_not_hold(commune: Node,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Triggers dropped, an entry rewritten, the tree recomputed and the checkpoints deleted: verify
    says nothing covers the entries and exits 1."""
    rewrite(commune, 9)
    code, out, err = verify(capsys, commune)
    assert code == 1
    assert "not covered by any checkpoint: 25 entries (0..24)" in out
    assert "holds" not in out
    assert "none of the 25 entries is covered by any checkpoint" in err


def test_a_rewritten_history_is_a_fork_for_a_peer_database(commune: Node, police: Node,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The same rewrite, held against the peer's database, is reported as a fork from entry 9 on."""
    rewrite(commune, 9)
    code, out, err = verify(capsys, commune, "--peer", police.database)
    assert code == 1
    assert f"fork: peer {POLICE} holds a checkpoint of size 17 whose root the entries do not produce" in err
    assert "witnessed by peers:   9 entries (0..8)" in out


def test_a_rewritten_and_resigned_history_is_caught_by_a_peer_bundle(commune: Node, police: Node, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An attacker who also re-signs a checkpoint with the node's key gets "holds" on the node's own
    checkpoints only; the peer's exported bundle shows the fork."""
    bundle = tmp_path / "police.bundle"
    assert run(capsys, "audit", "export", police.database, "--out", bundle)[0] == 0
    rewrite(commune, 3, resign=commune.signer)
    code, out, _ = verify(capsys, commune)
    assert code == 0
    assert "own checkpoints only: 25 entries" in out
    code, _, err = verify(capsys, commune, "--peer", bundle)
    assert code == 1
    assert "fork: peer" in err
    assert "size 25 whose root the entries do not produce" in err


def test_a_bundle_carries_the_checkpoints_its_node_witnessed(commune: Node, police: Node, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A peer's bundle holds the checkpoints it witnessed, and serves as --peer like its database."""
    bundle = tmp_path / "police.bundle"
    assert run(capsys, "audit", "export", police.database, "--out", bundle)[0] == 0
    notes = BundleSource(bundle).peer_checkpoint_notes()
    assert [n.split("\n")[1] for n in notes] == ["9", "17", "25"]
    assert run(capsys, "audit", "verify", bundle, "--cert", police.cert_file)[0] == 0
    code, out, _ = verify(capsys, commune, "--peer", bundle)
    assert code == 0
    assert "witnessed by peers:   25 entries" in out


def test_a_peer_holding_more_than_the_log_is_a_fork(commune: Node, police: Node,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A log cut back below what a peer holds, with its own checkpoints removed to match, is a fork."""
    commune.conn.close()
    with raw(commune.database) as conn:
        for table, column in (("audit_entries", "idx"), ("audit_checkpoints", "size")):
            conn.execute(f"DELETE FROM {table} WHERE {column} > 17")  # noqa: S608 - fixed names
        conn.execute("DELETE FROM audit_entries WHERE idx >= 17")
        conn.execute("DELETE FROM audit_nodes")
    rewrite(commune, 0)  # recompute the tree (and rewrite one more entry) as an attacker would
    code, _, err = verify(capsys, commune, "--peer", police.database)
    assert code == 1
    assert f"fork: peer {POLICE} holds a checkpoint of size 25, but the log ends at 17" in err


def test_a_peer_copy_signed_by_another_key_is_reported(commune: Node, police: Node, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint of this log in a peer's copy that no trusted key signed is a problem, not ignored."""
    rogue = NoteSigner.generate(ORIGIN)
    note = rogue.sign(f"{ORIGIN}\n30\n{'A' * 43}=\n")
    bundle = tmp_path / "forged.bundle"
    header = {"format": "vn-exchange-audit-bundle", "version": 1, "origin": origin_for(str(POLICE)),
              "entries": 0, "checkpoints": 0, "exported_at": now().isoformat()}
    bundle.write_text(json.dumps(header) + "\n" + json.dumps({"peer_checkpoint": note}) + "\n", "utf-8")
    code, _, err = verify(capsys, commune, "--peer", bundle)
    assert code == 1
    assert "holds a checkpoint of this log that does not verify" in err


def old_entries(node: Node, count: int, days: int) -> None:
    at = now() - dt.timedelta(days=days)
    node.add(*(dataclasses.replace(transfer(node.agency, Event.PUBLISHED, f"late{i}", str(POLICE)), time=at)
               for i in range(count)))


def test_entries_waiting_too_long_for_a_checkpoint_fail(commune: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """Entries left without a checkpoint for longer than --max-age (default a day) fail verify."""
    old_entries(commune, 3, days=3)
    code, out, err = verify(capsys, commune)
    assert code == 1
    assert "not covered by any checkpoint: 3 entries (25..27)" in out
    assert "3 entries have waited for a checkpoint since" in err
    assert verify(capsys, commune, "--max-age", "7d")[0] == 0


def test_a_bundle_is_judged_at_its_export(commune: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The age of a bundle's uncheckpointed tail is judged at its export time, not at the audit's."""
    old_entries(commune, 2, days=3)
    bundle = tmp_path / "commune.bundle"
    assert run(capsys, "audit", "export", commune.database, "--out", bundle)[0] == 0
    lines = bundle.read_text("utf-8").splitlines()
    header = json.loads(lines[0]) | {"exported_at": (now() - dt.timedelta(days=3, hours=-1)).isoformat()}
    bundle.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n", "utf-8")
    assert run(capsys, "audit", "verify", bundle, "--cert", commune.cert_file)[0] == 0
    assert verify(capsys, commune)[0] == 1


def test_max_age_must_be_a_duration(commune: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """A --max-age that is not a duration is a usage error (exit 2)."""
    assert verify(capsys, commune, "--max-age", "soon")[0] == 2
    assert verify(capsys, commune, "--max-age", "-1h")[0] == 2
