"""The drop-folder door: files in, dossiers submitted once, bad files rejected with the reason."""

from __future__ import annotations

from pathlib import Path

from exchange.adapters.dropfolder import DropFolder
from exchange.codes import AgencyCode, ProcedureCode
from exchange.demo import samples
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from tests.node_cluster import COMMUNE, POLICE, Cluster, wait_until


def dossier_bytes(sequence: int) -> bytes:
    spec = samples.SampleSpec(AgencyCode(COMMUNE), ProcedureCode("2.000986"), size_kb=2, sequence=sequence)
    return samples.to_bytes(samples.sample_dossier(spec))


def drop(folder: Path, name: str, data: bytes) -> None:
    """What an agency system does: write aside, then rename into place."""
    part = folder / "inbox" / f"{name}.part"
    part.write_bytes(data)
    part.rename(folder / "inbox" / f"{name}.xml")


def open_node(tmp_path: Path) -> tuple[NodeContext, DropFolder]:
    district = Cluster(tmp_path)
    district.init(COMMUNE)
    config = NodeConfig.load(district.config(COMMUNE))
    return NodeContext.open(config), DropFolder(config.dropfolder_dir)


def count_dossiers(ctx: NodeContext) -> int:
    return int(ctx.store.conn.execute("SELECT COUNT(*) FROM dossiers").fetchone()[0])


def test_dropped_dossier_is_submitted_and_filed(tmp_path: Path) -> None:
    """A complete file is submitted and moved to accepted/; a .part file is left alone."""
    ctx, folder = open_node(tmp_path)
    drop(folder.root, "birth-1", dossier_bytes(1))
    (folder.root / "inbox" / "half.part").write_bytes(b"<Doss")
    assert folder.poll(ctx) == 1
    assert (folder.root / "accepted" / "birth-1.xml").is_file()
    assert (folder.root / "inbox" / "half.part").is_file()
    assert count_dossiers(ctx) == 1
    ctx.close()


def test_bad_dossier_is_rejected_with_the_reason(tmp_path: Path) -> None:
    """An invalid file goes to rejected/ beside an .error.txt naming the line and the field."""
    ctx, folder = open_node(tmp_path)
    drop(folder.root, "bad", dossier_bytes(2).replace(b"<IdNumber>", b"<IdNumber>x"))
    folder.poll(ctx)
    error = (folder.root / "rejected" / "bad.error.txt").read_text("utf-8")
    assert "bad.xml:" in error
    assert "IdNumber" in error
    assert (folder.root / "rejected" / "bad.xml").is_file()
    assert count_dossiers(ctx) == 0
    ctx.close()


def test_restart_takes_claimed_files_exactly_once(tmp_path: Path) -> None:
    """Files a crash left in processing/ are taken on the next pass; one already submitted is
    filed as accepted without a second submission."""
    ctx, folder = open_node(tmp_path)
    drop(folder.root, "one", dossier_bytes(3))
    folder.poll(ctx)
    # a crash after submitting but before filing: the file is back in processing/
    (folder.root / "accepted" / "one.xml").replace(folder.root / "processing" / "one.xml")
    # and a crash right after claiming another file
    (folder.root / "processing" / "two.xml").write_bytes(dossier_bytes(4))
    assert folder.poll(ctx) == 2
    assert sorted(p.name for p in (folder.root / "accepted").glob("*.xml")) == ["one.xml", "two.xml"]
    assert count_dossiers(ctx) == 2
    ctx.close()


def test_running_node_takes_dropped_files(tmp_path: Path) -> None:
    """With the daemon running, a dropped dossier reaches the police as a ready step."""
    district = Cluster(tmp_path)
    district.init(COMMUNE, POLICE)
    district.start(COMMUNE)
    district.start(POLICE)
    try:
        inbox = tmp_path / "nodes" / COMMUNE / "state" / "dropfolder"
        drop(inbox, "birth", dossier_bytes(5))
        wait_until(lambda: bool(district.ready(POLICE, "residence")), 60, "the police's step")
        assert (inbox / "accepted" / "birth.xml").is_file()
    finally:
        district.stop_all()
