"""Provisioning: a new node directory, ready for ``exchange run --config DIR/node.toml``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from exchange.audit.checkpoints import NoteSigner, attest, origin_for, register_key
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.codes import AgencyCode
from exchange.envelope import pki
from exchange.envelope.trust import TrustStore
from exchange.errors import ConfigError, InvalidEnvelope
from exchange.files import write_atomic, write_private
from exchange.node.config import BROKER_PASSWORD_ENV, NodeConfig, split_password
from exchange.rules.model import RuleSet
from exchange.store.node import Store

CRL_FILE = "crl.pem"
"""The CA's CRL in a node directory, next to ca.pem."""
BROKER_SECRET = "broker.secret"  # noqa: S105 - a file name
"""The broker's password in a node directory (0600)."""


def init_node(agency: AgencyCode, ca: pki.CertificateAuthority, rules_dir: Path, rules: RuleSet, broker: str,
              out: Path, metrics_port: int = 0, broker_password: str | None = None) -> Path:
    """A node directory: key and certificate from the CA, checkpoint key, node.toml, database. The
    broker's password (given, or taken out of the URL) goes to a 0600 file, never to node.toml."""
    _refuse_existing(out)
    name = rules.agency(agency).name  # the agency must be in the directory
    pki.issue_agency(ca, agency, out, name=name)
    shutil.copyfile(ca.directory / pki.CA_CERT, out / "ca.pem")
    write_atomic(out / CRL_FILE, ca.crl().public_bytes(Encoding.PEM))
    return _provision(agency, name, rules_dir, rules, broker, out, metrics_port, broker_password, crl=True)


@dataclass(frozen=True)
class Credentials:
    """What a node is set up with when the CA's key stays with the CA: the CA certificate, the
    agency's certificate issued from its request, the agency's key, and the CA's CRL if at hand."""

    ca_cert: Path
    cert: Path
    key: Path
    crl: Path | None = None


def check_credentials(agency: AgencyCode, given: Credentials) -> None:
    """Refuse (ConfigError, saying why) a certificate that does not chain to the CA certificate,
    is not valid now, is revoked by the given CRL, names another agency, or whose key is not the
    one given."""
    cert = pki.load_cert(given.cert)
    key = pki.load_key(given.key)
    try:
        trust = TrustStore.load(given.ca_cert, given.crl)
        signer = trust.check(cert)
    except InvalidEnvelope as exc:
        raise ConfigError(f"{given.cert}: not a usable signing certificate of the CA in {given.ca_cert}: "
                          f"{exc}") from None
    if signer.agency != agency:
        raise ConfigError(f"{given.cert} is the certificate of {signer.agency}, not of {agency}")
    if not pki.key_matches(cert, key):
        raise ConfigError(f"{given.key} is not the key of the certificate {given.cert}")


def init_node_from_files(agency: AgencyCode, given: Credentials, rules_dir: Path, rules: RuleSet, broker: str,
                         out: Path, metrics_port: int = 0, broker_password: str | None = None) -> Path:
    """A node directory as ``init_node`` makes it, from a CA certificate, an agency certificate
    and key already issued (``exchange pki request`` / ``pki issue --csr``): no CA key needed. The
    files are checked (``check_credentials``), then copied with the same names and modes."""
    _refuse_existing(out)
    name = rules.agency(agency).name  # the agency must be in the directory
    check_credentials(agency, given)
    out.mkdir(parents=True, exist_ok=True)
    _install(given.key, out / pki.AGENCY_KEY, private=True)
    _install(given.cert, out / pki.AGENCY_CERT)
    _install(given.ca_cert, out / "ca.pem")
    if given.crl is not None:
        _install(given.crl, out / CRL_FILE)
    return _provision(agency, name, rules_dir, rules, broker, out, metrics_port, broker_password,
                      crl=given.crl is not None)


def _install(source: Path, target: Path, *, private: bool = False) -> None:
    """Copy ``source`` to ``target`` (0600 if ``private``); a file already in place is only made private."""
    if target.exists() and source.resolve() == target.resolve():
        if private:
            target.chmod(0o600)
        return
    data = source.read_bytes()
    if private:
        write_private(target, data)
    else:
        write_atomic(target, data)


def _refuse_existing(out: Path) -> None:
    if (out / "node.toml").exists():
        raise ConfigError(f"{out / 'node.toml'} exists: refusing to overwrite a node")


def _provision(agency: AgencyCode, name: str, rules_dir: Path, rules: RuleSet, broker: str, out: Path,
               metrics_port: int, broker_password: str | None, *, crl: bool) -> Path:
    """The rest of a node directory, once its certificates and keys are in place: the checkpoint
    key, the broker's secret, node.toml and the database with its first audit entries."""
    signer = NoteSigner.generate(origin_for(str(agency)))
    signer.save(out / "checkpoint-key.pem")
    (out / "state").mkdir(parents=True, exist_ok=True)
    broker, in_url = split_password(broker)
    password = broker_password or in_url
    if password:
        write_private(out / BROKER_SECRET, password.encode("utf-8") + b"\n")
    toml = _toml(agency, name, rules_dir, broker, metrics_port, credentials=bool(password), crl=crl)
    write_atomic(out / "node.toml", toml.encode("utf-8"))
    config = NodeConfig.load(out / "node.toml")
    store = Store(config.database)
    try:
        audit = AuditLog(store.conn, str(agency))
        with store.transaction():
            register_key(audit, signer.verifier, attest(signer.verifier, pki.load_key(out / pki.AGENCY_KEY)),
                         (out / pki.AGENCY_CERT).read_text())
            audit.append(Entry(Event.RULES_LOADED, str(agency), detail={"digest": rules.digest}))
    finally:
        store.close()
    return out / "node.toml"


def _toml(agency: AgencyCode, name: str, rules_dir: Path, broker: str, metrics_port: int, *,
          credentials: bool = False, crl: bool = True) -> str:
    secret = (f'# the broker\'s password (or set {BROKER_PASSWORD_ENV}); never in this file\n'
              f'broker_credentials = "{BROKER_SECRET}"\n' if credentials else "")
    return (f'# exchange node for {agency} ({name})\n'
            f'[node]\nagency = "{agency}"\nstate_dir = "state"\nmetrics_port = {metrics_port}\n\n'
            f'[pki]\nca = "ca.pem"\ncert = "{pki.AGENCY_CERT}"\nkey = "{pki.AGENCY_KEY}"\n'
            f'# the CA\'s revocation list: replace it with each new one (`exchange pki crl`); the node\n'
            f'# reloads it when the file changes and refuses every signer once it is out of date\n'
            + (f'crl = "{CRL_FILE}"\n\n' if crl else
               f'# no CRL was given at init: revocation is not checked until the CA\'s CRL is put in\n'
               f'# {CRL_FILE} and this line uncommented (then SIGHUP)\n# crl = "{CRL_FILE}"\n\n')
            + f'[audit]\ncheckpoint_key = "checkpoint-key.pem"\ncheckpoint_every_entries = 1000\n'
            f'checkpoint_every_seconds = 60\n\n'
            f'[rules]\ndir = "{rules_dir.resolve()}"\n\n'
            f'[transport]\n# empty: the embedded transport shared by the nodes of this host\n'
            f'broker = "{broker}"\n{secret}embedded = "../transport.db"\n')
