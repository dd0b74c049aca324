"""Provisioning: a new node directory, ready for ``exchange run --config DIR/node.toml``; or, with
``--system``, a node laid out for the systemd unit: configuration in /etc/exchange/AGENCY, state
in /var/lib/exchange/AGENCY, owned and moded for the ``exchange`` service user."""

from __future__ import annotations

import os
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
from exchange.rules.load import load as load_rules
from exchange.rules.model import RuleSet
from exchange.store.node import Store

CRL_FILE = "crl.pem"
"""The CA's CRL in a node directory, next to ca.pem."""
BROKER_SECRET = "broker.secret"  # noqa: S105 - a file name
"""The broker's password in a node directory (0600)."""


@dataclass(frozen=True)
class Placement:
    """Where a new node's files are written, and the paths its node.toml names for them: the same
    place for a node directory of one's own; under ``--root`` for a system install, node.toml
    naming the paths they will have once that root is /."""

    out: Path
    """The folder for node.toml, the keys and the certificates."""
    state: Path
    """The state folder, where the database is created."""
    state_in_toml: str
    embedded_in_toml: str
    rules_in_toml: str

    @classmethod
    def local(cls, out: Path, rules_dir: Path) -> Placement:
        """A node directory of one's own: state inside it, paths relative to it (it can be moved whole)."""
        return cls(out, out / "state", "state", "../transport.db", str(rules_dir.resolve()))


def init_node(agency: AgencyCode, ca: pki.CertificateAuthority, rules_dir: Path, rules: RuleSet, broker: str,
              out: Path | Placement, metrics_port: int = 0, broker_password: str | None = None) -> Path:
    """A node directory: key and certificate from the CA, checkpoint key, node.toml, database. The
    broker's password (given, or taken out of the URL) goes to a 0600 file, never to node.toml."""
    place = out if isinstance(out, Placement) else Placement.local(out, rules_dir)
    _refuse_existing(place)
    name = rules.agency(agency).name  # the agency must be in the directory
    pki.issue_agency(ca, agency, place.out, name=name)
    shutil.copyfile(ca.directory / pki.CA_CERT, place.out / "ca.pem")
    write_atomic(place.out / CRL_FILE, ca.crl().public_bytes(Encoding.PEM))
    return _provision(agency, name, rules, broker, place, metrics_port, broker_password, crl=True)


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
                         out: Path | Placement, metrics_port: int = 0, broker_password: str | None = None) -> Path:
    """A node directory as ``init_node`` makes it, from a CA certificate, an agency certificate
    and key already issued (``exchange pki request`` / ``pki issue --csr``): no CA key needed. The
    files are checked (``check_credentials``), then copied with the same names and modes."""
    place = out if isinstance(out, Placement) else Placement.local(out, rules_dir)
    _refuse_existing(place)
    name = rules.agency(agency).name  # the agency must be in the directory
    check_credentials(agency, given)
    out = place.out
    out.mkdir(parents=True, exist_ok=True)
    _install(given.key, out / pki.AGENCY_KEY, private=True)
    _install(given.cert, out / pki.AGENCY_CERT)
    _install(given.ca_cert, out / "ca.pem")
    if given.crl is not None:
        _install(given.crl, out / CRL_FILE)
    return _provision(agency, name, rules, broker, place, metrics_port, broker_password, crl=given.crl is not None)


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


def _refuse_existing(place: Placement) -> None:
    if (place.out / "node.toml").exists():
        raise ConfigError(f"{place.out / 'node.toml'} exists: refusing to overwrite a node")
    if (place.state / "node.db").exists():
        raise ConfigError(f"{place.state / 'node.db'} exists: the state of an earlier node; move it away first")


def _provision(agency: AgencyCode, name: str, rules: RuleSet, broker: str, place: Placement,
               metrics_port: int, broker_password: str | None, *, crl: bool) -> Path:
    """The rest of a node directory, once its certificates and keys are in place: the checkpoint
    key, the broker's secret, node.toml and the database with its first audit entries."""
    out = place.out
    signer = NoteSigner.generate(origin_for(str(agency)))
    signer.save(out / "checkpoint-key.pem")
    place.state.mkdir(parents=True, exist_ok=True)
    broker, in_url = split_password(broker)
    password = broker_password or in_url
    if password:
        write_private(out / BROKER_SECRET, password.encode("utf-8") + b"\n")
    toml = _toml(agency, name, place, broker, metrics_port, credentials=bool(password), crl=crl)
    write_atomic(out / "node.toml", toml.encode("utf-8"))
    NodeConfig.load(out / "node.toml")  # what was written loads
    store = Store(place.state / "node.db")
    try:
        audit = AuditLog(store.conn, str(agency))
        with store.transaction():
            register_key(audit, signer.verifier, attest(signer.verifier, pki.load_key(out / pki.AGENCY_KEY)),
                         (out / pki.AGENCY_CERT).read_text())
            audit.append(Entry(Event.RULES_LOADED, str(agency), detail={"digest": rules.digest}))
    finally:
        store.close()
    return out / "node.toml"


def _toml(agency: AgencyCode, name: str, place: Placement, broker: str, metrics_port: int, *,
          credentials: bool = False, crl: bool = True) -> str:
    secret = (f'# the broker\'s password (or set {BROKER_PASSWORD_ENV}); never in this file\n'
              f'broker_credentials = "{BROKER_SECRET}"\n' if credentials else "")
    return (f'# exchange node for {agency} ({name})\n'
            f'[node]\nagency = "{agency}"\nstate_dir = "{place.state_in_toml}"\nmetrics_port = {metrics_port}\n\n'
            f'[pki]\nca = "ca.pem"\ncert = "{pki.AGENCY_CERT}"\nkey = "{pki.AGENCY_KEY}"\n'
            f'# the CA\'s revocation list: replace it with each new one (`exchange pki crl`); the node\n'
            f'# reloads it when the file changes and refuses every signer once it is out of date\n'
            + (f'crl = "{CRL_FILE}"\n\n' if crl else
               f'# no CRL was given at init: revocation is not checked until the CA\'s CRL is put in\n'
               f'# {CRL_FILE} and this line uncommented (then SIGHUP)\n# crl = "{CRL_FILE}"\n\n')
            + f'[audit]\ncheckpoint_key = "checkpoint-key.pem"\ncheckpoint_every_entries = 1000\n'
            f'checkpoint_every_seconds = 60\n\n'
            f'[rules]\ndir = "{place.rules_in_toml}"\n\n'
            f'[transport]\n# empty: the embedded transport shared by the nodes of this host\n'
            f'broker = "{broker}"\n{secret}embedded = "{place.embedded_in_toml}"\n')


# A system install: the layout the systemd unit names -----------------------------------------

SERVICE_USER = "exchange"
"""The user the unit runs as (systemd/exchange.sysusers.conf)."""
CONFIG_ROOT = Path("/etc/exchange")
STATE_ROOT = Path("/var/lib/exchange")
SYSTEM_RULES = CONFIG_ROOT / "rules"
"""The routing rules the nodes of a host share, and the unit's ExecStartPre checks."""
CONFIG_DIR_MODE = 0o750  # root:exchange: the service reads, only root changes
PUBLIC_FILE_MODE = 0o640  # root:exchange: node.toml, certificates, CRL
STATE_DIR_MODE = 0o700  # exchange:exchange, the service's alone


@dataclass(frozen=True)
class Account:
    """The service user and its group, as the installed system's /etc/passwd names them."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, root: Path, name: str = SERVICE_USER) -> Account:
        """The user ``name`` from ``root``/etc/passwd (not the host's, when installing into a root)."""
        passwd = root / "etc" / "passwd"
        try:
            lines = passwd.read_text("utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name:
                return cls(name, int(fields[2]), int(fields[3]))
        raise ConfigError(f"{passwd}: no user {name!r}, whom the unit runs as: install "
                          f"systemd/exchange.sysusers.conf as /usr/lib/sysusers.d/exchange.conf and run "
                          f"systemd-sysusers{' --root ' + str(root) if root != Path('/') else ''} first")


def system_placement(root: Path, agency: AgencyCode) -> Placement:
    """/etc/exchange/AGENCY and /var/lib/exchange/AGENCY under ``root``; node.toml names them as
    they are once ``root`` is / (the unit's paths), never with ``root`` in front."""
    state = STATE_ROOT / str(agency)
    return Placement(_under(root, CONFIG_ROOT / str(agency)), _under(root, state), str(state),
                     str(STATE_ROOT / "transport.db"), str(SYSTEM_RULES))


def prepare_system(root: Path, agency: AgencyCode, rules_dir: Path | None) -> tuple[Placement, Account, Path]:
    """Check what a system install needs before anything is made (the service user, root's
    rights, no node there yet), create /etc/exchange and /var/lib/exchange as the tmpfiles
    snippet would, and put the rules in /etc/exchange/rules. Returns the placement, the
    account, and the rules folder to load."""
    account = Account.lookup(root)
    if os.geteuid() != 0:
        raise ConfigError("node init --system gives the node's files to the user "
                          f"{account.name!r}: run it as root")
    place = system_placement(root, agency)
    _refuse_existing(place)
    _make_dir(_under(root, CONFIG_ROOT), 0, account.gid, CONFIG_DIR_MODE)
    _make_dir(_under(root, STATE_ROOT), account.uid, account.gid, STATE_DIR_MODE)
    return place, account, _install_rules(_under(root, SYSTEM_RULES), rules_dir)


def hand_over(place: Placement, account: Account) -> None:
    """Owners and modes the unit expects: the node's folder root:exchange 0750; its private
    files (written 0600: the agency key, the checkpoint key, the broker's password) the
    service user's, 0600; the rest root:exchange 0640; the state folder the service user's, 0700."""
    _make_dir(place.out, 0, account.gid, CONFIG_DIR_MODE)
    for path in place.out.iterdir():
        if path.is_dir():
            _make_dir(path, 0, account.gid, CONFIG_DIR_MODE)
        elif path.stat().st_mode & 0o077:
            _own(path, 0, account.gid, PUBLIC_FILE_MODE)
        else:
            _own(path, account.uid, account.gid, 0o600)
    _make_dir(place.state, account.uid, account.gid, STATE_DIR_MODE)
    for top, dirs, files in os.walk(place.state):
        for name in dirs + files:
            os.chown(Path(top) / name, account.uid, account.gid, follow_symlinks=False)


def _install_rules(target: Path, source: Path | None) -> Path:
    """The host's shared rules: ``source`` copied to ``target`` the first time; after that,
    ``source`` must be those same rules (the nodes of a host run one rule set)."""
    if source is None or source.resolve() == target.resolve():
        if not target.is_dir():
            raise ConfigError(f"{target}: no routing rules yet: give --rules DIR (the province's rules) to "
                              f"install them there")
        return target
    if target.exists():
        if _digest(target) != _digest(source):
            raise ConfigError(f"{target} holds other rules than {source}: the nodes of a host share one rule "
                              f"set; update {target} (then reload the nodes), or leave out --rules")
        return target
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    for top, dirs, files in os.walk(target):
        for name in dirs:
            (Path(top) / name).chmod(0o755)
        for name in files:
            (Path(top) / name).chmod(0o644)
    target.chmod(0o755)
    return target


def _digest(rules_dir: Path) -> str:
    return load_rules(rules_dir).digest


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _make_dir(path: Path, uid: int, gid: int, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _own(path, uid, gid, mode)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    path.chmod(mode)
