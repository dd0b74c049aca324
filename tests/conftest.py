"""Shared fixtures: a provincial CA with agency identities, sample dossiers, sealed envelopes."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from lxml import etree

from exchange.codes import AgencyCode, DossierCode
from exchange.demo import samples
from exchange.envelope import pki
from exchange.envelope.model import Header, Kind
from exchange.envelope.sealing import Opener, Signer
from exchange.envelope.trust import TrustStore
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from tests.agencies import BIRTH, COMMUNE, POLICE
from tests.node_cluster import Cluster
from tests.rabbit_node import RabbitNode, RabbitNodeError, private_node

T = TypeVar("T")


@dataclass(frozen=True)
class Pki:
    """A CA directory and the agency identities issued from it, all on disk."""

    root: Path
    ca: pki.CertificateAuthority

    def agency_dir(self, agency: AgencyCode) -> Path:
        return self.root / "agencies" / str(agency)

    def signer(self, agency: AgencyCode) -> Signer:
        directory = self.agency_dir(agency)
        if not (directory / pki.AGENCY_KEY).exists():
            pki.issue_agency(self.ca, agency, directory)
        return Signer.load(directory / pki.AGENCY_CERT, directory / pki.AGENCY_KEY)

    def opener(self, **kwargs: object) -> Opener:
        return Opener(TrustStore.load(self.root / "ca"), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pki_env(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    return Pki(root, pki.init_ca(root / "ca", "Quang Ninh Test CA"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second CA that nobody trusts, issuing the same agency codes."""
    root = tmp_path_factory.mktemp("rogue")
    return Pki(root, pki.init_ca(root / "ca", "Rogue CA"))


def make_dossier(size_kb: int = 10, sequence: int = 1, agency: AgencyCode = COMMUNE) -> etree._Element:
    return samples.sample_dossier(samples.SampleSpec(agency, BIRTH, size_kb=size_kb, sequence=sequence))


def transfer_header(dossier: etree._Element, sender: AgencyCode = COMMUNE,
                    recipient: AgencyCode = POLICE, **kwargs: object) -> Header:
    code = dossier.findtext("{urn:vn-exchange:dossier:1}Code") or ""
    return Header(kind=Kind.TRANSFER, sender=sender, recipient=recipient, dossier=DossierCode(code),
                  procedure=BIRTH, step="police", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def sealed(pki_env: Pki) -> bytes:
    """A valid 10 KiB transfer from the commune to the police, signed by the commune."""
    dossier = make_dossier()
    return pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier)


@pytest.fixture
def opener(pki_env: Pki) -> Opener:
    return pki_env.opener()


def require_tool(name: str) -> str:
    """The path of an outside tool; in CI its absence fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def commune(tmp_path: Path) -> Iterator[NodeContext]:
    """The commune's node, set up in the test's folder, as a context in this process."""
    district = Cluster(tmp_path)
    district.init(str(COMMUNE))
    with NodeContext.open(NodeConfig.load(district.config(str(COMMUNE)))) as ctx:
        yield ctx


@pytest.fixture
def past() -> Callable[[int], dt.datetime]:
    def days_ago(days: int) -> dt.datetime:
        return dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    return days_ago


@contextlib.contextmanager
def started(what: str, broker: contextlib.AbstractContextManager[T]) -> Iterator[T]:
    """A private broker (node, cluster) a test needs, always stopped after it; when this machine
    cannot start one, the test fails in CI and is skipped elsewhere."""
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(broker)
        except (RabbitNodeError, OSError, subprocess.SubprocessError) as exc:
            if os.environ.get("CI"):
                pytest.fail(f"cannot start {what}: {exc}")
            pytest.skip(f"cannot start {what}: {exc}")
        yield running


@pytest.fixture(scope="session")
def private_rabbit_session() -> Iterator[RabbitNode]:
    """One private RabbitMQ node (tests/rabbit_node.py) for the whole session, started on first
    use (about 6 s), always stopped and removed at the end. Tests take ``private_rabbit``."""
    with started("a private RabbitMQ node", private_node()) as node:
        yield node


@pytest.fixture
def private_rabbit(private_rabbit_session: RabbitNode) -> RabbitNode:
    """A private RabbitMQ node that this test may stop, kill, restart or add users to (never the
    host's broker); running when the test starts, whatever the previous test left it in."""
    private_rabbit_session.ensure_running()
    return private_rabbit_session
