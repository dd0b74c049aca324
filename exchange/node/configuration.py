"""A node's configuration bundles: installed from a file, kept by version, applied at their time.

Under the state folder, ``config/versions/N/`` holds bundle N as it was signed (``bundle.xml``) and
what it carries (``rules/``, ``ca.pem``, ``crl.pem``); ``config/active`` links to the version in
force. Installing verifies the bundle against the node's anchor, refuses a version not newer than
every one installed (rollback) and one already expired, writes the version's folder aside and
renames it into place, and audits it; a bundle whose time has come is applied at once, a later
one by the running node's housekeeping when its time comes. Applying switches the link (one
rename), then puts the rules and the trust store in force together, between two units of the
loop's work, without a restart; it is audited too.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree
from prometheus_client import CollectorRegistry, Gauge

from exchange import clock
from exchange.audit.entries import Event
from exchange.bundle import model
from exchange.bundle.model import Bundle
from exchange.codes import AgencyCode
from exchange.envelope import pki
from exchange.envelope.model import Header, Kind
from exchange.envelope.trust import TrustStore
from exchange.errors import (
    BundleBadSignature,
    BundleExpired,
    BundleRefused,
    BundleRollback,
    ConfigError,
    InvalidCode,
    InvalidEnvelope,
)
from exchange.files import write_atomic
from exchange.node.config import ACTIVE_BUNDLE, NodeConfig, active_bundle_version
from exchange.node.context import NodeContext
from exchange.node.workflow import enqueue
from exchange.rules.load import RuleBook
from exchange.xml.names import BUNDLE_NS, q

log = structlog.get_logger(__name__)

AGENCIES = "agencies.pem"
"""In a kept version's folder: the agencies' certificates the bundle carries."""
META = "meta.json"
"""In a kept version's folder: its version, digests, times and source, as verified at install."""
ANCHOR = "anchor.pem"
"""Beside node.toml when ``[config] anchor`` names none."""
WARN_BEFORE = dt.timedelta(days=7)
"""A bundle about to expire is warned of (log, ``config status``) this long before."""


@dataclass(frozen=True)
class Installed:
    """A bundle kept by this node."""

    version: int
    sha256: str
    effective: dt.datetime
    expires: dt.datetime
    rules_digest: str
    active: bool
    source: str = ""
    """Where it came from: the file installed, or the node that broadcast it."""

    def document(self) -> dict[str, object]:
        left = self.expires - clock.now()
        return {"version": self.version, "sha256": self.sha256, "effective": clock.utc(self.effective),
                "expires": clock.utc(self.expires), "rules_digest": self.rules_digest, "active": self.active,
                "source": self.source,
                "days_left": max(0, left.days), "expiring": left < WARN_BEFORE}


def folder(config: NodeConfig) -> Path:
    return config.state_dir / "config"


def anchor_of(config: NodeConfig) -> x509.Certificate:
    path = config.anchor or config.source.parent / ANCHOR
    if not path.exists():
        raise ConfigError(f"{path}: no configuration anchor; set [config] anchor in {config.source} to the "
                          "authority's certificate (authority.pem from `exchange config init-authority`)")
    return pki.load_cert(path)


def check_anchor(cert_path: Path, ca_path: Path) -> x509.Certificate:
    """The configuration authority's certificate, once it is known to be issued by the CA and to
    name no agency (an agency's certificate signs envelopes, never the province's configuration)."""
    cert = pki.load_cert(cert_path)
    ca = pki.load_cert(ca_path)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{cert_path}: not issued by this node's CA ({ca.subject.rfc4514_string()})") from None
    try:
        agency = pki.agency_of(cert)
    except InvalidCode:
        agency = None
    if agency is not None:
        raise ConfigError(f"{cert_path}: the certificate of agency {agency}, not of the configuration authority "
                          "(authority.pem from `exchange config init-authority`)")
    return cert


def set_anchor(node_dir: Path, cert: x509.Certificate) -> Path:
    """Pin the authority's certificate beside node.toml (``node init --anchor``)."""
    write_atomic(node_dir / ANCHOR, pki.cert_pem(cert))
    return node_dir / ANCHOR


def installed(config: NodeConfig) -> list[Installed]:
    """Every bundle kept here, oldest first."""
    versions = folder(config) / "versions"
    active = active_bundle_version(config)
    found = []
    for path in sorted((p for p in versions.glob("*") if p.name.isdigit()), key=lambda p: int(p.name)) \
            if versions.is_dir() else []:
        found.append(_kept(path, active))
    return found


def _kept(path: Path, active: int | None) -> Installed:
    """A kept version, from the few lines written beside it when it was installed (the running
    node reads this every few seconds: never the whole bundle)."""
    try:
        meta = json.loads((path / META).read_text("utf-8"))
        return Installed(int(meta["version"]), str(meta["sha256"]), clock.parse(meta["effective"]),
                         clock.parse(meta["expires"]), str(meta["rules_digest"]), int(meta["version"]) == active,
                         str(meta.get("source", "")))
    except (OSError, ValueError, KeyError):  # kept before META existed: read the bundle once
        bundle = model.read_unverified(path / "bundle.xml")
        return Installed(bundle.version, bundle.sha256, bundle.effective, bundle.expires, bundle.rules_digest,
                         bundle.version == active)


def install(ctx: NodeContext, data: bytes, source: str) -> Installed:
    """Verify and keep a bundle; apply it now if its time has come. BundleRefused (with its reason
    code) changes nothing."""
    with ctx.store.transaction():
        bundle = take(ctx, data, source)
    if bundle.effective <= clock.now():
        apply_due(ctx)
    return next(i for i in installed(ctx.config) if i.version == bundle.version)


def take(ctx: NodeContext, data: bytes, source: str) -> Bundle:
    """Verify a bundle, keep it and audit it, in the caller's transaction (the running node's
    housekeeping applies it when its time comes). The same bundle again is taken as it was."""
    bundle = model.verify(data, anchor_of(ctx.config), source=source)
    now = clock.now()
    kept = {i.version: i for i in installed(ctx.config)}
    if bundle.version in kept and kept[bundle.version].sha256 == bundle.sha256:
        return bundle  # a broadcast again, or a command repeated: nothing new
    if bundle.expires <= now:
        raise BundleExpired(f"{source}: version {bundle.version} expired on {clock.utc(bundle.expires)}")
    newest = max(kept, default=0)
    if bundle.version <= newest:
        raise BundleRollback(f"{source}: version {bundle.version} is not newer than version {newest}, "
                             "installed already: a bundle never goes back")
    _keep(ctx.config, bundle, data, source)
    ctx.record(ctx.entry(Event.CONFIG_INSTALLED, detail={
        "version": str(bundle.version), "sha256": bundle.sha256, "effective": clock.utc(bundle.effective),
        "expires": clock.utc(bundle.expires), "rules_digest": bundle.rules_digest, "source": source[:300]}))
    log.info("config.installed", version=bundle.version, effective=clock.utc(bundle.effective), source=source)
    return bundle


def _keep(config: NodeConfig, bundle: Bundle, data: bytes, source: str) -> None:
    versions = folder(config) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / str(bundle.version)
    if final.exists():  # kept by a transaction that did not commit: this bundle's files replace it
        shutil.rmtree(final)
    aside = versions / f".{bundle.version}.partial"
    shutil.rmtree(aside, ignore_errors=True)
    bundle.write_rules(aside / "rules")
    write_atomic(aside / "bundle.xml", data)
    meta = {"version": bundle.version, "sha256": bundle.sha256, "effective": clock.utc(bundle.effective),
            "expires": clock.utc(bundle.expires), "rules_digest": bundle.rules_digest, "source": source}
    write_atomic(aside / META, json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8"))
    write_atomic(aside / "ca.pem", bundle.ca_pem)
    if bundle.crl_pem is not None:
        write_atomic(aside / "crl.pem", bundle.crl_pem)
    if bundle.agency_certs_pem is not None:
        write_atomic(aside / AGENCIES, bundle.agency_certs_pem)
    aside.rename(final)


def apply_due(ctx: NodeContext) -> int | None:
    """Put in force the newest kept bundle whose time has come, if it is not in force already;
    returns its version."""
    now = clock.now()
    due = [i for i in installed(ctx.config) if i.effective <= now and i.expires > now]
    if not due or due[-1].active:
        return None
    chosen = due[-1]
    link = ctx.config.state_dir / ACTIVE_BUNDLE
    temporary = link.with_name(".active.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(Path("versions") / str(chosen.version))
    os.replace(temporary, link)
    put_in_force(ctx, chosen)
    return chosen.version


def put_in_force(ctx: NodeContext, bundle: Installed, *, applied_here: bool = True) -> None:
    """The active bundle's rules and trust store, both loaded before either replaces the one in force."""
    active = ctx.config.state_dir / ACTIVE_BUNDLE
    crl = active / "crl.pem"
    rulebook = RuleBook(active / "rules")
    trust = TrustStore.load(active / "ca.pem", crl if crl.exists() else None)
    ctx.rulebook = rulebook
    ctx.opener = replace(ctx.opener, trust=trust)
    ctx.config = replace(ctx.config, rules=active / "rules", ca=active / "ca.pem", crl=crl if crl.exists() else None)
    learnt = _learn_agencies(ctx, active / AGENCIES, trust)
    entries = [ctx.entry(Event.RULES_LOADED, detail={"digest": rulebook.current.digest})]
    if applied_here:  # else the command that switched it audited the switch
        entries.insert(0, ctx.entry(Event.CONFIG_APPLIED, detail={
            "version": str(bundle.version), "sha256": bundle.sha256, "rules_digest": rulebook.current.digest}))
    with ctx.store.transaction():
        ctx.record(*entries)
        waiting = ctx.store.due_now_for_configuration()  # refused by a peer that ran another bundle
    if waiting:
        log.info("config.retrying_refused", transfers=waiting, version=bundle.version)
    log.info("config.applied", version=bundle.version, rules_digest=rulebook.current.digest,
             agency_certificates=learnt)


def _learn_agencies(ctx: NodeContext, path: Path, trust: TrustStore) -> int:
    """The agencies' certificates a bundle carries, each that the trust store in force accepts:
    this node encrypts each agency's dossiers to its certificate from the first transfer on."""
    if not path.exists():
        return 0
    learnt = 0
    with ctx.store.transaction():
        for cert in x509.load_pem_x509_certificates(path.read_bytes()):
            try:
                signer = trust.check(cert)
            except InvalidEnvelope as exc:
                log.warning("config.agency_certificate_refused", subject=cert.subject.rfc4514_string(), error=str(exc))
                continue
            ctx.store.learn_certificate(str(signer.agency), cert.public_bytes(serialization.Encoding.DER),
                                        cert.not_valid_after_utc.timestamp())
            learnt += 1
    return learnt


def expiring(config: NodeConfig) -> Installed | None:
    """The bundle in force when it expires within ``WARN_BEFORE``."""
    current = next((i for i in installed(config) if i.active), None)
    if current is None or current.expires - clock.now() >= WARN_BEFORE:
        return None
    return current


POLL_EVERY_S = 5.0
"""How often the running node looks for a bundle whose time has come (reading kept bundles costs)."""
WARN_EVERY_S = 3600.0


@dataclass
class BundleWatch:
    """From the loop's housekeeping: apply a kept bundle when its time comes, take in one that a
    command applied (``config install``), and warn while the bundle in force nears its expiry."""

    ctx: NodeContext
    loaded: int | None = None
    current: Installed | None = None
    """The bundle in force, for the heartbeat."""
    checked_at: float = float("-inf")
    warned_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.loaded = active_bundle_version(self.ctx.config)
        self.current = next((i for i in installed(self.ctx.config) if i.active), None)

    def gauge(self, registry: CollectorRegistry) -> None:
        """``exchange_config_seconds_left``: until the bundle in force expires (NaN without one)."""
        Gauge("exchange_config_seconds_left", "Seconds until the configuration bundle in force expires",
              registry=registry).set_function(self._seconds_left)

    def _seconds_left(self) -> float:
        current = self.current
        return math.nan if current is None else (current.expires - clock.now()).total_seconds()

    def poll(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked_at < POLL_EVERY_S:
            return
        self.checked_at = now
        applied = apply_due(self.ctx)
        active = active_bundle_version(self.ctx.config)
        if applied is None and active is not None and active != self.loaded:
            current = next(i for i in installed(self.ctx.config) if i.version == active)
            put_in_force(self.ctx, current, applied_here=False)
        if active != self.loaded or applied is not None:
            self.current = next((i for i in installed(self.ctx.config) if i.active), None)
        self.loaded = active
        soon = expiring(self.ctx.config)
        if soon is not None and now - self.warned_at >= WARN_EVERY_S:
            self.warned_at = now
            log.warning("config.expiring", version=soon.version, expires=clock.utc(soon.expires),
                        days_left=soon.document()["days_left"])


def broadcast(ctx: NodeContext, data: bytes, source: str, recipients: list[AgencyCode] | None = None) -> list[str]:
    """Send a bundle to every agency in force in the directory (or to ``recipients``), one signed
    envelope each through the outbox: published, retried and receipted like transfers. The
    bundle is verified against this node's anchor first: no node broadcasts what nodes refuse."""
    bundle = model.verify(data, anchor_of(ctx.config), source=source)
    today = ctx.rules.calendar.local(clock.now()).date()
    targets = recipients if recipients is not None else sorted(
        a.code for a in ctx.rules.agencies.values() if a.in_force(today) and a.code != ctx.agency)
    payload_text = base64.b64encode(data).decode("ascii")
    with ctx.store.transaction():
        for agency in targets:
            payload = etree.Element(q("ConfigurationBundle", BUNDLE_NS), nsmap={None: BUNDLE_NS},  # type: ignore[dict-item]
                                    version=str(bundle.version))
            payload.text = payload_text
            header = Header(kind=Kind.CONFIGURATION, sender=ctx.agency, recipient=agency, created=clock.now())
            enqueue(ctx, header, payload, Event.SEALED, {"bundle": str(bundle.version)})
    log.info("config.broadcast", version=bundle.version, recipients=len(targets))
    return [str(a) for a in targets]


def install_crl(ctx: NodeContext, data: bytes, source: str) -> x509.CertificateRevocationList:
    """A CRL-only update between bundles: the CA signed it, so it needs no authority. It must be
    signed by a CA this node trusts, be newer than the CRL in force and not out of date; it then
    replaces the CRL file the node watches, which the running node reloads within seconds."""
    target = ctx.config.crl
    if target is None:
        raise ConfigError(f"{ctx.config.source} names no CRL file ([pki] crl): install a bundle with a CRL, or "
                          "name the file")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise BundleRefused(f"{source}: not a PEM CRL ({exc})") from None
    issuer = next((a for a in ctx.opener.trust.anchors if a.subject == crl.issuer), None)
    key = issuer.public_key() if issuer is not None else None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise BundleBadSignature(f"{source}: the CRL is not signed by a CA this node trusts")
    if crl.next_update_utc is not None and crl.next_update_utc <= clock.now():
        raise BundleExpired(f"{source}: the CRL was due to be replaced at {clock.utc(crl.next_update_utc)}")
    current = next(iter(ctx.opener.trust.crls), None)
    if current is not None and _crl_order(crl) <= _crl_order(current):
        raise BundleRollback(f"{source}: CRL {_crl_order(crl)} is not newer than the CRL in force "
                             f"{_crl_order(current)}")
    write_atomic(target, data)
    with ctx.store.transaction():
        ctx.record(ctx.entry(Event.CONFIG_INSTALLED, detail={"crl": str(_crl_order(crl)[0]),
                                                              "revoked": str(len(list(crl))), "source": source[:300]}))
    log.info("config.crl_installed", number=_crl_order(crl)[0], revoked=len(list(crl)), source=source)
    return crl


def _crl_order(crl: x509.CertificateRevocationList) -> tuple[int, float]:
    """(CRL number, issued) of a CRL: which of two CRLs of one CA is the newer."""
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return number, crl.last_update_utc.timestamp()
