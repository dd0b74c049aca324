"""Revocation that bites: every node is set up with the CA's CRL, reloads it when the file
changes, refuses every signer once it is stale, and warns well before it goes stale; a verify
without a CRL says that revocation was not checked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.serialization import Encoding

from exchange.adapters.embedded import EmbeddedTransport
from exchange.cli import main
from exchange.clock import now
from exchange.codes import DossierCode
from exchange.demo import samples
from exchange.envelope import pki
from exchange.envelope.model import Header, Kind
from exchange.envelope.sealing import Signer
from exchange.envelope.trust import TrustStore
from exchange.errors import Revoked, UntrustedSigner
from exchange.files import write_atomic
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.daemon import Daemon
from exchange.node.reload import CrlWatch, warn_before
from tests.agencies import BIRTH, COMMUNE, POLICE
from tests.node_cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    cluster = Cluster(tmp_path)
    cluster.init(str(COMMUNE), str(POLICE))
    return cluster


@pytest.fixture
def police(cluster: Cluster) -> Iterator[NodeContext]:
    with NodeContext.open(NodeConfig.load(cluster.config(str(POLICE)))) as ctx:
        yield ctx


def commune_envelope(cluster: Cluster) -> bytes:
    """A transfer from the commune to the police, signed with the commune node's key."""
    directory = cluster.config(str(COMMUNE)).parent
    signer = Signer.load(directory / pki.AGENCY_CERT, directory / pki.AGENCY_KEY)
    dossier = samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=2, sequence=1))
    code = DossierCode(dossier.findtext("{urn:vn-exchange:dossier:1}Code") or "")
    header = Header(kind=Kind.TRANSFER, sender=COMMUNE, recipient=POLICE, dossier=code, procedure=BIRTH,
                    step="police")
    return signer.seal(header, dossier)


def ca(cluster: Cluster) -> pki.CertificateAuthority:
    return pki.CertificateAuthority.load(cluster.root / "ca")


def publish_crl(cluster: Cluster, ctx: NodeContext, *, days: int = pki.CRL_DAYS) -> None:
    assert ctx.config.crl is not None
    write_atomic(ctx.config.crl, ca(cluster).crl(days=days).public_bytes(Encoding.PEM))


def revoke_commune(cluster: Cluster) -> None:
    directory = cluster.config(str(COMMUNE)).parent
    assert ca(cluster).revoke(pki.load_cert(directory / pki.AGENCY_CERT))


def test_node_init_configures_the_cas_crl(cluster: Cluster) -> None:
    """node init writes the CA's current CRL next to ca.pem and names it in node.toml."""
    config = NodeConfig.load(cluster.config(str(POLICE)))
    assert config.crl == config.ca.parent / "crl.pem"
    trust = TrustStore.load(config.ca, config.crl)
    assert len(trust.crls) == 1


def test_a_changed_crl_is_reloaded_and_revocation_bites(cluster: Cluster, police: NodeContext) -> None:
    """When the CRL file changes, the next housekeeping pass reloads the trust store, and an
    envelope from the revoked agency is refused as revoked."""
    body = commune_envelope(cluster)
    watch = CrlWatch(police)
    police.opener.open(body)
    revoke_commune(cluster)
    publish_crl(cluster, police)
    with structlog.testing.capture_logs() as logs:
        watch.poll()
    assert "trust.reloaded" in [e["event"] for e in logs]
    with pytest.raises(Revoked):
        police.opener.open(body)


def test_an_unchanged_crl_is_not_reloaded(police: NodeContext) -> None:
    """A housekeeping pass over an unchanged CRL file reloads nothing."""
    watch = CrlWatch(police)
    trust = police.opener.trust
    with structlog.testing.capture_logs() as logs:
        watch.poll()
        watch.poll()
    assert police.opener.trust is trust
    assert [e for e in logs if e["event"].startswith("trust.reload")] == []


def test_the_daemons_housekeeping_reloads_a_changed_crl(cluster: Cluster, police: NodeContext) -> None:
    """The node's loop watches the CRL file: a pass of housekeeping after it changed reloads it."""
    with EmbeddedTransport(police.config.embedded_transport) as transport:
        daemon = Daemon(police, transport)
        revoke_commune(cluster)
        publish_crl(cluster, police)
        with structlog.testing.capture_logs() as logs:
            daemon._housekeeping()
    assert "trust.reloaded" in [e["event"] for e in logs]
    with pytest.raises(Revoked):
        police.opener.open(commune_envelope(cluster))


def test_a_stale_crl_fails_closed(cluster: Cluster, police: NodeContext) -> None:
    """Once the CRL in force is out of date, every signer of its CA is refused, and the node says so."""
    watch = CrlWatch(police)
    publish_crl(cluster, police, days=0)
    with structlog.testing.capture_logs() as logs:
        watch.poll()
    assert "trust.crl_stale" in [e["event"] for e in logs]
    with pytest.raises(UntrustedSigner, match="out of date"):
        police.opener.open(commune_envelope(cluster))


def test_the_node_warns_before_the_crl_goes_stale(police: NodeContext) -> None:
    """With less than a third of a weekly CRL's validity left, the node warns and the gauge shows
    the seconds left; early in its validity it does not."""
    crl = police.opener.trust.crls[0]
    assert crl.next_update_utc is not None
    early, late = CrlWatch(police, clock=lambda: now() + dt.timedelta(days=1)), \
        CrlWatch(police, clock=lambda: now() + dt.timedelta(days=6))
    with structlog.testing.capture_logs() as logs:
        early.poll()
        late.poll()
    warnings = [e for e in logs if e["event"] == "trust.crl_expiring"]
    assert len(warnings) == 1
    assert 0 < warnings[0]["seconds_left"] < 86_400
    assert warn_before(crl) == dt.timedelta(days=pki.CRL_DAYS) / 3
    with EmbeddedTransport(police.config.embedded_transport) as transport:
        daemon = Daemon(police, transport)
        left = daemon.metrics.registry.get_sample_value("exchange_crl_seconds_left")
    assert left is not None
    assert 6 * 86_400 < left <= 7 * 86_400


def test_verify_without_a_crl_says_revocation_was_not_checked(cluster: Cluster,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """envelope verify without --crl exits as before and says on stderr that revocation was not
    checked; with --crl it does not."""
    path = cluster.root / "envelope.xml"
    path.write_bytes(commune_envelope(cluster))
    trust = str(cluster.root / "ca")
    assert main(["envelope", "verify", "--trust", trust, str(path)]) == 0
    assert "revocation was not checked" in capsys.readouterr().err
    crl = cluster.config(str(POLICE)).parent / "crl.pem"
    assert main(["envelope", "verify", "--trust", trust, "--crl", str(crl), str(path)]) == 0
    assert "revocation" not in capsys.readouterr().err
