"""What SIGHUP reloads, between two units of the loop's work: ``node.toml``, the routing rules,
the trust store (the CA file and the CRL), the signing certificate and key (``cert.pem`` and
``key.pem`` replaced by a renewed pair) and the audit checkpoint key (after ``exchange audit
rotate-key``). Each is read and checked whole before it replaces the one in force; a bad edit
keeps the old one and the log says why. Each load is logged with what it was loaded from.

The node's own certificate is watched too (``CertificateWatch``): from ``CERT_WARN_DAYS`` before it
expires, ``certificate.expiring`` is logged at start and once a day, with the days left.

The CRL is also watched (``CrlWatch``): the loop's housekeeping reloads the trust store when the
file changes, and warns (``trust.crl_expiring``) well before the CRL goes out of date, after which
every signer of that CA is refused until a fresh one is put in place.

Of ``node.toml``, only the settings in ``RELOADABLE`` change a running node; a change to any
other (the agency, paths of state, keys, the broker, ports) is logged as waiting for a restart.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import structlog
from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

from exchange.audit.checkpoints import NoteSigner, check_attestation
from exchange.audit.entries import Event
from exchange.clock import now
from exchange.envelope import pki
from exchange.envelope.encryption import Recipient
from exchange.envelope.sealing import Signer
from exchange.envelope.trust import TrustStore
from exchange.errors import ConfigError, InvalidCode, InvalidEnvelope, RuleError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.node.health import CERT_WARN_DAYS
from exchange.store import audit as audit_rows

log = structlog.get_logger(__name__)

CRL_WARN_FRACTION = 1 / 3
"""A CRL is about to go stale when less than this share of its validity is left..."""
CRL_WARN_BEFORE = dt.timedelta(days=2)
"""...or less than this (whichever comes first), but never for more than half its validity."""
CRL_WARN_EVERY_S = 3600.0
"""How often the warning is repeated while the CRL is not replaced."""

CERT_WARN_EVERY_S = 86400.0
"""How often ``certificate.expiring`` is repeated while the certificate is not renewed."""

RELOADABLE = ("webhook", "token", "ca", "crl", "checkpoint_every_entries", "checkpoint_every_seconds")
"""The settings of ``node.toml`` a reload puts in force; the others need a restart."""


def reload(ctx: NodeContext, doors: Sequence[Door]) -> bool:
    """Reload the configuration, then the trust store it names, the signer (checked against that
    trust store), the checkpoint key and the rules; True when all were loaded, False when one was
    refused (and kept)."""
    configured = _config(ctx, doors)
    trusted = _trust(ctx)
    signing = _signer(ctx)
    checkpointing = _checkpoint_key(ctx)
    ruled = _rules(ctx)
    return configured and trusted and signing and checkpointing and ruled


def _signer(ctx: NodeContext) -> bool:
    """Put a renewed certificate and key in force for new envelopes, if the files changed and the
    pair is good: the key is the certificate's, the certificate names this node's agency, chains to
    the CA in force, is valid now and not revoked. Envelopes already sealed keep their signature
    (peers accept them while the old certificate is valid)."""
    config, old = ctx.config, ctx.signer
    try:
        fresh = Signer.load(config.cert, config.key)
        if fresh.cert == old.cert and pki.key_matches(old.cert, fresh.key):
            return True  # unchanged
        if not pki.key_matches(fresh.cert, fresh.key):
            raise ConfigError(f"{config.key} is not the key of the certificate {config.cert}")
        if fresh.agency != ctx.agency:
            raise ConfigError(f"{config.cert} is the certificate of {fresh.agency}, not of {ctx.agency}")
        ctx.opener.trust.check(fresh.cert)
    except (ConfigError, InvalidCode, InvalidEnvelope) as exc:
        log.error("signer.reload_refused", cert=str(config.cert), key=str(config.key), error=str(exc),
                  serial=format(old.cert.serial_number, "x"))
        return False
    ctx.signer = fresh
    ctx.opener = replace(ctx.opener, recipient=Recipient.load(config.cert, config.key))
    log.info("signer.reloaded", cert=str(config.cert), serial=format(fresh.cert.serial_number, "x"),
             previous_serial=format(old.cert.serial_number, "x"),
             not_after=fresh.cert.not_valid_after_utc.isoformat())
    return True


def _checkpoint_key(ctx: NodeContext) -> bool:
    """Sign checkpoints with the key in ``checkpoint_key`` if it changed, once the audit log holds
    it with its attestation (``exchange audit rotate-key`` records both); otherwise keep the old key.
    Warn when the key in force is not attested by the certificate in force (peers would not witness
    its checkpoints): the operator rotates it after installing a renewed certificate."""
    current = ctx.checkpointer.signer
    try:
        fresh = NoteSigner.load(ctx.config.checkpoint_key, current.name)
    except ConfigError as exc:
        log.error("audit.key_reload_refused", checkpoint_key=str(ctx.config.checkpoint_key), error=str(exc))
        return False
    if fresh.verifier != current.verifier:
        if not audit_rows.has_key(ctx.store.conn, str(fresh.verifier)):
            log.error("audit.key_reload_refused", checkpoint_key=str(ctx.config.checkpoint_key),
                      error="the audit log does not hold this key and its attestation: use "
                            "`exchange audit rotate-key`")
            return False
        ctx.checkpointer.signer = fresh
        log.info("audit.key_reloaded", checkpoint_key=str(ctx.config.checkpoint_key), verifier=str(fresh.verifier))
    record = next((r for r in audit_rows.key_records(ctx.store.conn) if r.verifier == str(fresh.verifier)), None)
    if record is None or not check_attestation(fresh.verifier, record.attestation, ctx.signer.cert):
        log.warning("audit.key_not_attested", verifier=str(fresh.verifier),
                    serial=format(ctx.signer.cert.serial_number, "x"),
                    hint="the certificate in force did not attest the checkpoint key: run "
                         "`exchange audit rotate-key --config` and reload")
    return True


def _config(ctx: NodeContext, doors: Sequence[Door]) -> bool:
    source = ctx.config.source
    try:
        fresh = NodeConfig.load(source)
        merged = replace(ctx.config, **{name: getattr(fresh, name) for name in RELOADABLE})
        for door in doors:
            door.check(merged)
    except ConfigError as exc:
        log.error("config.reload_refused", config=str(source), error=str(exc))
        return False
    waiting = [f.name for f in fields(NodeConfig)
               if f.name not in RELOADABLE and getattr(fresh, f.name) != getattr(ctx.config, f.name)]
    ctx.config = merged
    ctx.checkpointer.every_entries = merged.checkpoint_every_entries
    ctx.checkpointer.every_seconds = merged.checkpoint_every_seconds
    log.info("config.reloaded", config=str(source), webhook=merged.webhook or None,
             checkpoint_every_entries=merged.checkpoint_every_entries,
             checkpoint_every_seconds=merged.checkpoint_every_seconds)
    if waiting:
        log.warning("config.restart_needed", config=str(source), settings=waiting)
    return True


def _trust(ctx: NodeContext) -> bool:
    config = ctx.config
    try:
        trust = TrustStore.load(config.ca, config.crl)
    except ConfigError as exc:
        log.error("trust.reload_refused", ca=str(config.ca), crl=str(config.crl) if config.crl else None,
                  error=str(exc))
        return False
    ctx.opener = replace(ctx.opener, trust=trust)
    log.info("trust.reloaded", ca=str(config.ca), crl=str(config.crl) if config.crl else None,
             **_crl_summary(trust))
    return True


def _crl_summary(trust: TrustStore) -> dict[str, str | int | None]:
    if not trust.crls:
        return {}
    crl = trust.crls[0]
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    next_update: dt.datetime | None = crl.next_update_utc
    return {"crl_number": number, "crl_next_update": next_update.isoformat() if next_update else None}


def _rules(ctx: NodeContext) -> bool:
    directory = ctx.rulebook.directory
    try:
        rules = ctx.rulebook.reload()
    except RuleError as exc:
        log.error("rules.reload_refused", rules_dir=str(directory), problems=[str(p) for p in exc.problems][:20])
        return False
    with ctx.store.transaction():
        ctx.record(ctx.entry(Event.RULES_LOADED, detail={"digest": rules.digest}))
    log.info("rules.reloaded", rules_dir=str(directory), digest=rules.digest)
    return True


Stamp = tuple[int, int, int] | None
"""What tells a changed file: (inode, size, mtime in ns); None when there is no file."""


@dataclass
class CertificateWatch:
    """The certificate the node signs with, watched from the loop's housekeeping: from
    ``CERT_WARN_DAYS`` before it expires, ``certificate.expiring`` (days left) at the first poll and
    then once a day; ``certificate.expired`` once it has. Its not-after goes into the heartbeat."""

    ctx: NodeContext
    clock: Callable[[], dt.datetime] = now
    _warned_at: float = field(default=-math.inf, init=False)
    _serial: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._note()

    def _note(self) -> None:
        cert = self.ctx.signer.cert
        if cert.serial_number != self._serial:  # a renewed certificate is warned of afresh
            self._serial, self._warned_at = cert.serial_number, -math.inf

    def seconds_left(self) -> float:
        return self.ctx.signer.cert.not_valid_after_utc.timestamp() - self.clock().timestamp()

    def poll(self) -> None:
        self._note()
        if time.monotonic() - self._warned_at < CERT_WARN_EVERY_S:
            return
        cert = self.ctx.signer.cert
        at = self.clock()
        left = cert.not_valid_after_utc - at
        if left > dt.timedelta(days=CERT_WARN_DAYS):
            return
        self._warned_at = time.monotonic()
        event, say = ("certificate.expired", log.error) if left.total_seconds() <= 0 else \
            ("certificate.expiring", log.warning)
        say(event, cert=str(self.ctx.config.cert), serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc.isoformat(), days_left=left.days,
            hint="request a new certificate (exchange pki request), install it and reload (SIGHUP)")


@dataclass
class CrlWatch:
    """The configured CRL, watched from the loop's housekeeping: the trust store (only it) is
    reloaded when the file changes, and a CRL about to go stale is warned of, repeatedly. The
    node's own certificate is watched with it (``certificate``)."""

    ctx: NodeContext
    clock: Callable[[], dt.datetime] = now
    _stamp: Stamp = field(default=None, init=False)
    _warned_at: float = field(default=-math.inf, init=False)
    certificate: CertificateWatch = field(init=False)

    def __post_init__(self) -> None:
        self._stamp = _stamp(self.ctx.config.crl)
        self.certificate = CertificateWatch(self.ctx, self.clock)

    def gauge(self, registry: CollectorRegistry) -> None:
        """``exchange_crl_seconds_left``: until the CRL in force goes stale (negative: it has)."""
        Gauge("exchange_crl_seconds_left", "Seconds until the CRL in force is out of date",
              registry=registry).set_function(self._gauge_value)

    def _gauge_value(self) -> float:
        left = self.seconds_left()
        return math.inf if left is None else left

    def poll(self) -> None:
        """Reload the trust store if the CRL file changed; warn if the CRL in force is going stale,
        or the node's certificate is about to expire."""
        self.certificate.poll()
        path = self.ctx.config.crl
        if path is None:
            return
        stamp = _stamp(path)
        if stamp != self._stamp:
            self._stamp = stamp
            log.info("trust.crl_changed", crl=str(path))
            try:
                if _trust(self.ctx):
                    self._warned_at = -math.inf
            except OSError as exc:  # unreadable for now: the trust store in force stays
                log.error("trust.reload_refused", crl=str(path), error=str(exc))
        self._warn()

    def seconds_left(self) -> float | None:
        """Until the first CRL in force goes stale; None without a CRL that ever does."""
        updates = [crl.next_update_utc for crl in self.ctx.opener.trust.crls if crl.next_update_utc]
        return min(updates).timestamp() - self.clock().timestamp() if updates else None

    def _warn(self) -> None:
        if time.monotonic() - self._warned_at < CRL_WARN_EVERY_S:
            return
        at = self.clock()
        for crl in self.ctx.opener.trust.crls:
            next_update = crl.next_update_utc
            if next_update is None or next_update - at > warn_before(crl):
                continue
            self._warned_at = time.monotonic()
            event, say = (("trust.crl_stale", log.error) if next_update < at else ("trust.crl_expiring", log.warning))
            say(event, crl=str(self.ctx.config.crl), issuer=crl.issuer.rfc4514_string(),
                next_update=next_update.isoformat(), seconds_left=int((next_update - at).total_seconds()))


def warn_before(crl: x509.CertificateRevocationList) -> dt.timedelta:
    """How long before its next update a CRL is warned of: a third of its validity or two days,
    whichever comes first, but never more than half its validity (a daily CRL is not always due)."""
    next_update = crl.next_update_utc
    if next_update is None:
        return dt.timedelta(0)
    validity = next_update - crl.last_update_utc
    return min(max(validity * CRL_WARN_FRACTION, CRL_WARN_BEFORE), validity / 2)


def _stamp(path: Path | None) -> Stamp:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
