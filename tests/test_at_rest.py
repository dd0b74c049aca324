"""What a node keeps of citizens' data, encrypted at rest with its storage key ([privacy]
storage_key), and hand-offs refused rather than sent in clear with [privacy] encrypt = "always".

In process over one embedded transport: the birth route's three nodes, their databases read raw
afterwards as anyone with a copy of the file would."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from exchange.cli import main
from exchange.demo import samples
from exchange.envelope import pki
from exchange.errors import ConfigError, RecipientUnknown, StoreError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.workflow import complete, submit
from exchange.store.cipher import MAGIC, ColumnCipher
from exchange.store.states import DossierState
from exchange.xml.names import DOSSIER_NS, q
from tests import in_process
from tests.agencies import BIRTH, COMMUNE, POLICE
from tests.in_process import BIRTH_ROUTE, Trio, settle
from tests.node_cluster import Cluster

SPEC = samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=7)
PAYLOADS = (("outbox", "body"), ("inbox", "payload"), ("dossiers", "payload"))


def applicant() -> tuple[bytes, bytes]:
    root = samples.sample_dossier(SPEC)
    name = root.findtext(f"{q('Applicant', DOSSIER_NS)}/{q('FullName', DOSSIER_NS)}") or ""
    number = root.findtext(f"{q('Applicant', DOSSIER_NS)}/{q('IdNumber', DOSSIER_NS)}") or ""
    assert name
    assert number
    return name.encode("utf-8"), number.encode("ascii")


def with_privacy(cluster: Cluster, agency: object, **settings: str) -> None:
    with cluster.config(str(agency)).open("a", encoding="utf-8") as toml:
        toml.write("\n[privacy]\n" + "".join(f'{key} = "{value}"\n' for key, value in settings.items()))


@pytest.fixture
def sealed_trio(tmp_path: Path) -> Iterator[Trio]:
    """The three nodes, each with a storage key of its own."""
    cluster = Cluster(tmp_path)
    cluster.init(*(str(a) for a in BIRTH_ROUTE))
    for agency in BIRTH_ROUTE:
        key = tmp_path / f"{agency}.storage.key"
        assert main(["node", "storage-key", "--out", str(key)]) == 0
        with_privacy(cluster, agency, storage_key=str(key))
    with in_process.trio(cluster) as nodes:
        yield nodes


def raw_values(ctx: NodeContext) -> list[bytes]:
    """Every payload value of the node's database, read with plain sqlite3 (no key)."""
    with sqlite3.connect(ctx.config.database) as conn:
        return [bytes(value) for table, column in PAYLOADS
                for (value,) in conn.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")]  # noqa: S608


def test_a_route_completes_with_every_payload_sealed_at_rest(sealed_trio: Trio) -> None:
    """Each node keeps its outbox, inbox and dossiers encrypted: the raw database file and every
    payload value hold no applicant name or identity number, and the route completes."""
    commune, police, insurance, transport = sealed_trio
    code = submit(commune, samples.to_bytes(samples.sample_dossier(SPEC)))
    settle(transport, commune, police, insurance)
    complete(police, code, "residence")
    settle(transport, commune, police, insurance)
    complete(insurance, code, "insurance")
    settle(transport, commune, police, insurance)
    complete(commune, code, "return")
    settle(transport, commune, police, insurance)
    name, number = applicant()
    for ctx in (commune, police, insurance):
        assert ctx.store.dossier(str(code)).state is DossierState.COMPLETED  # type: ignore[union-attr]
        values = raw_values(ctx)
        assert values
        assert all(value.startswith(MAGIC) for value in values)
        ctx.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = ctx.config.database.read_bytes()
        assert name not in raw
        assert number not in raw
    assert name in (police.store.dossier_payload(str(code)) or b"")


def test_rows_written_in_clear_are_sealed_when_the_key_is_configured(tmp_path: Path) -> None:
    """A node that ran without a storage key gets one: its next start seals what it holds, and
    what it holds reads the same."""
    cluster = Cluster(tmp_path)
    with in_process.trio(cluster) as (commune, police, insurance, transport):
        code = submit(commune, samples.to_bytes(samples.sample_dossier(SPEC)))
        settle(transport, commune, police, insurance)
        before = commune.store.dossier_payload(str(code))
    key = tmp_path / "storage.key"
    ColumnCipher.generate(key)
    with_privacy(cluster, COMMUNE, storage_key=str(key))
    with NodeContext.open(NodeConfig.load(cluster.config(str(COMMUNE)))) as commune:
        assert not all(value.startswith(MAGIC) for value in raw_values(commune))
        assert commune.store.seal_plaintext_rows() > 0
        assert all(value.startswith(MAGIC) for value in raw_values(commune))
        assert commune.store.dossier_payload(str(code)) == before
        assert commune.store.seal_plaintext_rows() == 0


def test_without_the_key_a_sealed_payload_is_refused_by_name(sealed_trio: Trio) -> None:
    """A store opened without the key does not hand out ciphertext as a dossier: it says why."""
    commune, police, insurance, transport = sealed_trio
    code = submit(commune, samples.to_bytes(samples.sample_dossier(SPEC)))
    with NodeContext.open(NodeConfig.load(commune.config.source)) as keyed:
        keyless = type(keyed.store)(keyed.config.database)
        try:
            with pytest.raises(StoreError, match=r"dossiers\.payload.*no \[privacy\] storage_key"):
                keyless.dossier_payload(str(code))
        finally:
            keyless.close()


def test_a_value_moved_to_another_row_does_not_decrypt(sealed_trio: Trio) -> None:
    """The additional data names table, column and row: a sealed dossier copied over another's is refused."""
    commune, police, insurance, transport = sealed_trio
    first = submit(commune, samples.to_bytes(samples.sample_dossier(SPEC)))
    second = submit(commune, samples.to_bytes(samples.sample_dossier(
        samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=8))))
    with commune.store.transaction() as conn:
        conn.execute("UPDATE dossiers SET payload = (SELECT payload FROM dossiers WHERE code = ?) WHERE code = ?",
                     (str(first), str(second)))
    with pytest.raises(StoreError, match="does not decrypt"):
        commune.store.dossier_payload(str(second))


@pytest.mark.parametrize(("content", "mode", "expected"), [
    (os.urandom(32), 0o644, "readable by others"),
    (os.urandom(16), 0o600, "32 random bytes"),
])
def test_a_storage_key_is_private_and_whole(tmp_path: Path, content: bytes, mode: int, expected: str) -> None:
    key = tmp_path / "storage.key"
    key.write_bytes(content)
    key.chmod(mode)
    with pytest.raises(ConfigError, match=expected):
        ColumnCipher.load(key)


def test_always_refuses_a_hand_off_it_cannot_encrypt(tmp_path: Path) -> None:
    """With encrypt = "always" and no certificate of the police, the desk's submission is refused
    with the reason and leaves nothing behind; once the certificate is known it goes, encrypted."""
    cluster = Cluster(tmp_path)
    cluster.init(*(str(a) for a in BIRTH_ROUTE))
    with_privacy(cluster, COMMUNE, encrypt="always")
    with in_process.trio(cluster) as (commune, police, insurance, transport):
        data = samples.to_bytes(samples.sample_dossier(SPEC))
        with pytest.raises(RecipientUnknown, match=str(POLICE)):
            submit(commune, data)
        assert commune.store.dossiers() == []
        assert commune.store.due_outbox(10) == []
        with commune.store.transaction():
            for agency in (POLICE, *BIRTH_ROUTE[2:]):
                der = pki.load_cert(cluster.root / "nodes" / str(agency) / pki.AGENCY_CERT).public_bytes(
                    Encoding.DER)
                commune.store.learn_certificate(str(agency), der, 4e9)
        submit(commune, data)
        assert all(b"EncryptedPayload" in row.body for row in commune.store.due_outbox(10) if row.kind == "transfer")
