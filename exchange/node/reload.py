"""What SIGHUP reloads, between two units of the loop's work: ``node.toml``, the routing rules and
the trust store (the CA file and the CRL). Each is read and checked whole before it replaces the
one in force; a bad edit keeps the old one and the log says why. Each load is logged with what
it was loaded from.

Of ``node.toml``, only the settings in ``RELOADABLE`` change a running node; a change to any
other (the agency, paths of state, keys, the broker, ports) is logged as waiting for a restart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import fields, replace

import structlog
from cryptography import x509

from exchange.audit.entries import Event
from exchange.envelope.trust import TrustStore
from exchange.errors import ConfigError, RuleError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.doors import Door

log = structlog.get_logger(__name__)

RELOADABLE = ("webhook", "token", "ca", "crl", "checkpoint_every_entries", "checkpoint_every_seconds")
"""The settings of ``node.toml`` a reload puts in force; the others need a restart."""


def reload(ctx: NodeContext, doors: Sequence[Door]) -> bool:
    """Reload the configuration, then the trust store it names, then the rules; True when all
    three were loaded, False when one was refused (and kept)."""
    configured = _config(ctx, doors)
    trusted = _trust(ctx)
    ruled = _rules(ctx)
    return configured and trusted and ruled


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
