"""The auditor's commands as a contract: every tampering is caught with its position, bundles
verify without the database, proofs check with hashlib alone, and two nodes reconcile."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exchange.audit import checkpoints
from exchange.audit.entries import Event
from exchange.envelope import pki
from tests.agencies import DAM_HA_POLICE
from tests.audit_helpers import Node, filled, make_node, raw, run, transfer

DOCS = Path(__file__).resolve().parent.parent / "docs" / "auditing.md"
POLICE = str(DAM_HA_POLICE)
DOSSIER = "000.04.10.H49-261129-0002"


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.init_ca(tmp_path / "ca", "Audit CLI CA")


@pytest.fixture
def node(tmp_path: Path, ca: pki.CertificateAuthority) -> Node:
    node = filled(make_node(tmp_path / "node", ca), 24, checkpoint_every=8)
    node.conn.close()
    return node


def verify(capsys: pytest.CaptureFixture[str], target: Path, node: Node) -> tuple[int, str, str]:
    return run(capsys, "audit", "verify", target, "--cert", node.cert_file)


def test_good_log_holds_with_key_or_certificate(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """An untouched database verifies with the checkpoint key and with the agency certificate."""
    code, out, _ = run(capsys, "audit", "verify", node.database, "--key", node.key_file)
    assert code == 0
    assert "25 entries" in out
    assert "holds" in out
    assert verify(capsys, node.database, node)[0] == 0


def test_another_agencys_certificate_is_not_trusted(node: Node, tmp_path: Path,
                                                    ca: pki.CertificateAuthority,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Checkpoint keys attested by one agency are refused under another agency's certificate."""
    other = pki.issue_agency(ca, pki.AgencyCode("000.05.10.H49"), tmp_path / "other")
    assert other is not None
    code, _, err = run(capsys, "audit", "verify", node.database, "--cert", tmp_path / "other" / "cert.pem")
    assert code == 1
    assert "not attested" in err


def tamper(node: Node, statement: str, *params: object) -> None:
    with raw(node.database) as conn:
        conn.execute(statement, params)


def test_single_byte_edit_of_an_entry_is_caught_at_its_position(node: Node,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """One changed byte in entry 9 is reported at entry 9 and at the checkpoints that cover it."""
    data = raw(node.database).execute("SELECT data FROM audit_entries WHERE idx = 9").fetchone()[0]
    tamper(node, "UPDATE audit_entries SET data = ? WHERE idx = 9", bytes(data).replace(b"m8", b"m9"))
    code, _, err = verify(capsys, node.database, node)
    assert code == 1
    assert "stored hash at level 0 index 9 does not match" in err
    assert "checkpoint of size 17 does not match entries 9..16" in err


def test_dropped_entry_is_caught(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """A deleted entry in the middle is reported as missing at its position."""
    tamper(node, "DELETE FROM audit_entries WHERE idx = 12")
    code, _, err = verify(capsys, node.database, node)
    assert code == 1
    assert "entry 12 is missing" in err


def test_swapped_pair_is_caught(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """Two entries swapped (with their leaf hashes) are reported as moved."""
    conn = raw(node.database)
    a, b = (bytes(conn.execute("SELECT data FROM audit_entries WHERE idx = ?", (i,)).fetchone()[0]) for i in (5, 6))
    with conn:
        conn.execute("UPDATE audit_entries SET data = ? WHERE idx = 5", (b,))
        conn.execute("UPDATE audit_entries SET data = ? WHERE idx = 6", (a,))
    code, _, err = verify(capsys, node.database, node)
    assert code == 1
    assert "entry 5 says it is entry 6" in err


def test_truncated_tail_is_caught(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """Entries cut off the end, below the last checkpoint, are reported."""
    tamper(node, "DELETE FROM audit_entries WHERE idx >= 20")
    code, _, err = verify(capsys, node.database, node)
    assert code == 1
    assert "covers entries the log does not have: the log ends at 20" in err


def test_edited_stored_hash_is_caught(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """A stored interior hash that no longer matches its entries is reported by level and index."""
    tamper(node, "UPDATE audit_nodes SET hash = ? WHERE level = 2 AND idx = 1", b"\x00" * 32)
    code, _, err = verify(capsys, node.database, node)
    assert code == 1
    assert "stored hash at level 2 index 1" in err


def test_edited_checkpoint_is_caught(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint whose text was edited has no trusted signature."""
    note = raw(node.database).execute("SELECT note FROM audit_checkpoints WHERE size = 9").fetchone()[0]
    tamper(node, "UPDATE audit_checkpoints SET note = ? WHERE size = 9", note.replace("\n9\n", "\n8\n"))
    code, _, err = verify(capsys, node.database, node)
    assert code == 1
    assert "no trusted signature" in err


def export(capsys: pytest.CaptureFixture[str], node: Node, out: Path) -> Path:
    assert run(capsys, "audit", "export", node.database, "--out", out)[0] == 0
    return out


def test_bundle_verifies_without_the_database(node: Node, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An exported bundle verifies on its own once the database is gone."""
    bundle = export(capsys, node, tmp_path / "node.bundle")
    node.database.unlink()
    code, out, _ = verify(capsys, bundle, node)
    assert code == 0
    assert "25 entries, 3 checkpoints" in out


def edit_bundle(bundle: Path, change: object) -> None:
    lines = bundle.read_text("utf-8").splitlines()
    change(lines)  # type: ignore[operator]
    bundle.write_text("\n".join(lines) + "\n", "utf-8")


def entry_line(lines: list[str], index: int) -> int:
    return next(n for n, line in enumerate(lines) if f'\\"i\\":{index},' in line)


@pytest.mark.parametrize(("name", "expected"), [
    ("byte", r"checkpoint of size \d+ does not match entries"),
    ("drop", r"entry 7 says it is entry 8"),
    ("swap", r"entry 7 says it is entry 8"),
    ("truncate", r"covers entries the log does not have"),
])
def test_bundle_tampering_is_caught(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    name: str, expected: str) -> None:
    """A changed byte, a dropped line, a swapped pair or a cut tail in a bundle is caught."""
    bundle = export(capsys, node, tmp_path / "node.bundle")

    def change(lines: list[str]) -> None:
        at = entry_line(lines, 7)
        if name == "byte":
            lines[at] = lines[at].replace("m6", "m7")
        elif name == "drop":
            del lines[at]
        elif name == "swap":
            lines[at], lines[at + 1] = lines[at + 1], lines[at]
        else:
            del lines[entry_line(lines, 20):entry_line(lines, 24) + 1]

    edit_bundle(bundle, change)
    code, _, err = verify(capsys, bundle, node)
    assert code == 1
    assert re.search(expected, err), err


def documented_checker(tmp_path: Path, document: object, key_file: Path) -> subprocess.CompletedProcess[str]:
    """Run the stand-alone checker of docs/auditing.md on a proof document."""
    recipe = DOCS.read_text("utf-8").split("<!-- recipe: check_proof.py -->\n```python\n")[1].split("```")[0]
    script = tmp_path / "check_proof.py"
    script.write_text(recipe, "utf-8")
    proof = tmp_path / "proof.json"
    proof.write_text(document if isinstance(document, str) else json.dumps(document), "utf-8")
    return subprocess.run([sys.executable, str(script), str(proof), str(key_file)],
                          capture_output=True, text=True, timeout=60)


def test_prove_checks_with_the_documented_recipe(node: Node, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The stand-alone recipe of docs/auditing.md (hashlib and cryptography only) accepts a proof
    and refuses it once an entry is changed."""
    code, out, _ = run(capsys, "audit", "prove", node.database, "--dossier", DOSSIER)
    assert code == 0
    document = json.loads(out)
    assert len(document["entries"]) == 5
    result = documented_checker(tmp_path, out, node.key_file)
    assert result.returncode == 0, result.stderr
    assert "all 5 entries are in vn-exchange/audit/000.04.10.H49" in result.stdout
    document["entries"][2]["entry"] = document["entries"][2]["entry"].replace('"published"', '"refused"')
    result = documented_checker(tmp_path, document, node.key_file)
    assert result.returncode == 1
    assert "FAILS" in result.stdout


def test_prove_works_on_a_bundle_alone(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle without its database proves a dossier, and the documented checker accepts the proof."""
    bundle = export(capsys, node, tmp_path / "node.bundle")
    node.database.unlink()
    code, out, _ = run(capsys, "audit", "prove", bundle, "--dossier", DOSSIER)
    assert code == 0, out
    assert json.loads(out)["tree_size"] == 25
    result = documented_checker(tmp_path, out, node.key_file)
    assert result.returncode == 0, result.stderr
    assert "all 5 entries are in vn-exchange/audit/000.04.10.H49 at size 25" in result.stdout


@pytest.mark.parametrize("named_by", ["size", "file"])
def test_prove_against_an_older_checkpoint(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           named_by: str) -> None:
    """--checkpoint (a size of the log's, or a note file) proves against that checkpoint, not the latest."""
    checkpoint = "9" if named_by == "size" else str(checkpoint_files(node, tmp_path)[9])
    code, out, _ = run(capsys, "audit", "prove", node.database, "--dossier", DOSSIER, "--checkpoint", checkpoint)
    assert code == 0
    document = json.loads(out)
    assert document["tree_size"] == 9
    assert [e["index"] for e in document["entries"]] == [2, 7]
    assert [e["index"] for e in document["not_yet_checkpointed"]] == [12, 17, 22]
    result = documented_checker(tmp_path, out, node.key_file)
    assert result.returncode == 0, result.stderr
    assert "all 2 entries are in vn-exchange/audit/000.04.10.H49 at size 9" in result.stdout


def test_prove_refuses_a_checkpoint_the_log_does_not_produce(node: Node, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A signed checkpoint whose root the log's entries do not give, or a size it has none of, is refused."""
    forged = tmp_path / "forged.txt"
    forged.write_text(node.signer.sign(checkpoints.checkpoint_body(node.signer.name, 17, b"\x05" * 32)), "utf-8")
    code, _, err = run(capsys, "audit", "prove", node.database, "--dossier", DOSSIER, "--checkpoint", forged)
    assert code == 1
    assert "checkpoint of size 17 does not match the log's entries" in err
    code, _, err = run(capsys, "audit", "prove", node.database, "--dossier", DOSSIER, "--checkpoint", "10")
    assert code == 1
    assert "no checkpoint of size 10 (its checkpoints: 9, 17, 25)" in err


def test_prove_unknown_dossier_exits_1(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """Proving a dossier the log never saw exits 1."""
    code, _, err = run(capsys, "audit", "prove", node.database, "--dossier", "000.04.10.H49-261129-0099")
    assert code == 1
    assert "no entry" in err


def checkpoint_files(node: Node, tmp_path: Path) -> dict[int, Path]:
    files = {}
    for size, note in raw(node.database).execute("SELECT size, note FROM audit_checkpoints"):
        files[size] = tmp_path / f"cp-{size}.txt"
        files[size].write_text(note, "utf-8")
    return files


def test_consistency_of_two_checkpoints(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two checkpoints of one honest log are consistent; a forged later one is a fork."""
    bundle = export(capsys, node, tmp_path / "node.bundle")
    files = checkpoint_files(node, tmp_path)
    code, out, _ = run(capsys, "audit", "consistency", files[9], files[25], "--bundle", bundle,
                       "--cert", node.cert_file)
    assert code == 0
    assert "size 9 is a prefix of size 25" in out
    forged = node.signer.sign(checkpoints.checkpoint_body(node.signer.name, 25, b"\x05" * 32))
    files[25].write_text(forged, "utf-8")
    code, _, err = run(capsys, "audit", "consistency", files[9], files[25], "--bundle", bundle)
    assert code == 1
    assert "checkpoint of size 25 does not match" in err


def consistency_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> dict[str, Any]:
    code, out, err = run(capsys, "audit", "consistency", *argv, "--json")
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


@pytest.mark.parametrize(("old", "new"), [(9, 25), (17, 25), (9, 17), (25, 25)])
def test_consistency_proof_checks_with_the_documented_checker(node: Node, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              old: int, new: int) -> None:
    """The proof `consistency --json` prints is accepted by the checker of docs/auditing.md, and
    refused once one of its hashes is changed."""
    bundle = export(capsys, node, tmp_path / "node.bundle")
    files = checkpoint_files(node, tmp_path)
    document = consistency_json(capsys, files[old], files[new], "--bundle", bundle, "--cert", node.cert_file)
    assert (document["old"]["size"], document["new"]["size"]) == (old, new)
    result = documented_checker(tmp_path, document, node.key_file)
    assert result.returncode == 0, result.stderr
    assert f"size {old} is a prefix of size {new}" in result.stdout
    if not document["proof"]:
        return
    document["proof"][-1] = "00" * 32
    result = documented_checker(tmp_path, document, node.key_file)
    assert result.returncode == 1
    assert f"FAILS: size {old} is not a prefix of size {new}" in result.stdout


def test_documented_checker_takes_an_old_size_that_is_a_power_of_two(tmp_path: Path, ca: pki.CertificateAuthority,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """From size 8 (a power of two, whose root RFC 9162 leaves out of the proof) the checker accepts the proof."""
    node = filled(make_node(tmp_path / "node", ca), 15, checkpoint_every=7)
    files = checkpoint_files(node, tmp_path)
    assert sorted(files) == [8, 15, 16]
    for new in (15, 16):
        document = consistency_json(capsys, files[8], files[new], "--bundle", node.database)
        result = documented_checker(tmp_path, document, node.key_file)
        assert result.returncode == 0, result.stderr


def test_consistency_prints_sizes_roots_and_proof_hashes(node: Node, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The text output names both sizes and roots and every proof hash, in hex as receipts carry them."""
    files = checkpoint_files(node, tmp_path)
    document = consistency_json(capsys, files[9], files[25], "--bundle", node.database)
    code, out, _ = run(capsys, "audit", "consistency", files[9], files[25], "--bundle", node.database)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["old", "size", "9", "root", document["old"]["root"]]
    assert lines[1].split() == ["new", "size", "25", "root", document["new"]["root"]]
    assert [line.split()[-1] for line in lines[2:-1]] == document["proof"]
    assert document["proof"]


def test_consistency_refuses_checkpoints_in_the_wrong_order(node: Node, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The newer checkpoint given first is refused with a message saying which size came where."""
    files = checkpoint_files(node, tmp_path)
    code, out, err = run(capsys, "audit", "consistency", files[25], files[9], "--bundle", node.database)
    assert code == 1
    assert out == ""
    assert "wrong order: OLD has size 25, NEW has size 9; give the older (smaller) checkpoint first" in err


def test_consistency_takes_config_and_checkpoint_sizes(node: Node, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--config stands in for the log and the key, and OLD and NEW may name the log's own checkpoints by size."""
    files = checkpoint_files(node, tmp_path)
    by_size = consistency_json(capsys, "9", "25", "--config", node_config(node))
    by_file = consistency_json(capsys, files[9], files[25], "--config", node_config(node))
    assert by_size == by_file
    assert by_size["old"]["checkpoint"] == files[9].read_text("utf-8")


def pair(tmp_path: Path, ca: pki.CertificateAuthority, drop: str | None = None) -> tuple[Node, Node]:
    """A commune and the police, with three transfers and their receipts on both sides."""
    commune = make_node(tmp_path / "commune", ca)
    police = make_node(tmp_path / "police", ca, POLICE)
    for i in range(3):
        message = f"msg-{i}"
        sent = [transfer(commune.agency, Event.PUBLISHED, message, POLICE),
                transfer(commune.agency, Event.RECEIPT_RECEIVED, message, POLICE)]
        got = [transfer(police.agency, Event.RECEIVED, message, commune.agency),
               transfer(police.agency, Event.RECEIPT_SENT, message, commune.agency)]
        commune.add(*[e for e in sent if (e.event.value, e.message_id) != (drop, message)])
        police.add(*[e for e in got if (e.event.value, e.message_id) != (drop, message)])
    commune.checkpoint()
    police.checkpoint()
    return commune, police


def test_reconcile_matches_both_halves(tmp_path: Path, ca: pki.CertificateAuthority,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Every published transfer has its reception and both receipt records."""
    commune, police = pair(tmp_path, ca)
    a = export(capsys, commune, tmp_path / "a.bundle")
    b = export(capsys, police, tmp_path / "b.bundle")
    code, out, _ = run(capsys, "audit", "reconcile", a, b)
    assert code == 0
    assert "3 transfer(s) matched on both sides, 0 without" in out


@pytest.mark.parametrize(("drop", "gap"), [
    ("received", "published by 000.04.10.H49, never recorded by 000.30.10.H49"),
    ("receipt-sent", "recorded no receipt sent"),
    ("receipt-received", "recorded none received"),
    ("published", "never published by 000.04.10.H49"),
])
def test_reconcile_lists_missing_halves(tmp_path: Path, ca: pki.CertificateAuthority,
                                        capsys: pytest.CaptureFixture[str], drop: str, gap: str) -> None:
    """A transfer missing one of its records on either side is listed, and reconcile exits 1."""
    commune, police = pair(tmp_path, ca, drop=drop)
    a = export(capsys, commune, tmp_path / "a.bundle")
    b = export(capsys, police, tmp_path / "b.bundle")
    code, out, _ = run(capsys, "audit", "reconcile", a, b)
    assert code == 1
    assert gap in out
    assert "msg-" in out


def test_reconcile_takes_config_for_this_node(tmp_path: Path, ca: pki.CertificateAuthority,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """With --config naming this node, the other side alone is given, as a bundle or a database."""
    commune, police = pair(tmp_path, ca)
    b = export(capsys, police, tmp_path / "b.bundle")
    for other in (b, police.database):
        code, out, _ = run(capsys, "audit", "reconcile", "--config", node_config(commune), other)
        assert code == 0
        assert "3 transfer(s) matched on both sides, 0 without" in out


def test_show_marks_late_hand_offs(tmp_path: Path, ca: pki.CertificateAuthority,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The processing-control view marks a hand-off after its due date as late."""
    node = make_node(tmp_path / "node", ca)
    node.add(transfer(node.agency, Event.PUBLISHED, "a", POLICE, due="2099-01-01"),
             transfer(node.agency, Event.RECEIPT_RECEIVED, "a", POLICE),
             transfer(node.agency, Event.PUBLISHED, "b", POLICE, due="2020-01-01"))
    code, out, _ = run(capsys, "audit", "show", node.database, "--dossier", "000.04.10.H49-261129-0001")
    assert code == 0
    lines = out.splitlines()
    assert any("2099-01-01" in line and "on time" in line for line in lines)
    assert any("2020-01-01" in line and "LATE" in line for line in lines)


def node_config(node: Node) -> Path:
    """A node.toml naming the node's database (node.db in its state directory) and checkpoint key."""
    config = node.directory / "node.toml"
    config.write_text(f'[node]\nagency = "{node.agency}"\nstate_dir = "."\n'
                      '[pki]\nca = "../ca/ca.pem"\ncert = "agency/cert.pem"\nkey = "agency/key.pem"\n'
                      '[audit]\ncheckpoint_key = "checkpoint-key.pem"\n[rules]\ndir = "rules"\n', "utf-8")
    return config


def test_config_points_at_a_nodes_files(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """--config NODE_TOML stands in for the database and the key."""
    code, out, _ = run(capsys, "audit", "verify", "--config", node_config(node))
    assert code == 0
    assert "holds" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing action, a missing log, or a log given both ways is a usage error."""
    assert run(capsys, "audit")[0] == 2
    assert run(capsys, "audit", "consistency", "a", "b")[0] == 2
    assert run(capsys, "audit", "consistency", "a", "b", "--bundle", "x", "--config", "y")[0] == 2
    assert run(capsys, "audit", "verify", "db", "--config", "y", "--key", "k")[0] == 2
    assert run(capsys, "audit", "reconcile", "a")[0] == 2
    assert run(capsys, "audit", "reconcile", "a", "b", "--config", "y")[0] == 2
