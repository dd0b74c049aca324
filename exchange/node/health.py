"""The node's health: what the loop saw of its transport (``Link``), joined with what the
transport says of itself (``seen``), the heartbeat file the loop writes (``Heartbeat``), and how
``exchange check``, another process, judges that file.

The loop never ends on a transport fault: it notes the fault here, skips transport work until
the next attempt time (``TRANSPORT_RETRY``) and keeps pinging the watchdog. Health turns bad
when the transport has been down longer than ``DOWN_AFTER_S``, or when the heartbeat is older
than ``STALE_AFTER_S`` (the loop is stuck or gone).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from exchange import clock
from exchange.audit.log import AuditLog
from exchange.files import write_atomic
from exchange.node.config import NodeConfig
from exchange.node.transport import TransportHealth
from exchange.retry import Backoff
from exchange.store.node import Store

log = structlog.get_logger(__name__)

DOWN_AFTER_S = 30.0
"""A transport down (or never reached) for longer than this makes the node unhealthy."""
STALE_AFTER_S = 10.0
"""A heartbeat older than this means the loop is not running."""
HEARTBEAT_EVERY_S = 1.0
"""The loop rewrites its heartbeat at most this often."""
HEARTBEAT_FILE = "heartbeat.json"
"""In the node's state directory."""
WEBHOOK_BACKLOG_MAX = 1000
"""More webhook pushes waiting than this: the agency system is not taking them."""
CERT_WARN_DAYS = 30
"""A node warns (log, heartbeat, metric) from this many days before its certificate expires."""
CONFIG_WARN_DAYS = 7
"""A node warns (log, heartbeat) from this many days before its configuration bundle expires."""


def days_left(not_after: float, now: float) -> int:
    """Whole days from ``now`` until ``not_after`` (negative once it has passed)."""
    return int((not_after - now) // 86400)


TRANSPORT_RETRY = Backoff(first=0.25, maximum=5.0, attempts=sys.maxsize)
"""The loop's next try at a transport that failed: a quarter second doubling to five. It never
gives up on its own transport (``attempts`` is not consulted); health reports a long outage."""


class Link:
    """The loop's view of its transport: up or down since when, the last error, when to try again."""

    def __init__(self) -> None:
        self.up = False
        """False until the first transport call succeeds."""
        self.since = time.time()
        """Wall time the current state (up, or down/not yet reached) began."""
        self.error = ""
        self.failures = 0
        """Consecutive failures in the current outage."""
        self._next_try = 0.0

    def due(self) -> bool:
        """Whether transport work may be tried now (not inside the backoff after a failure)."""
        return time.monotonic() >= self._next_try

    def succeeded(self) -> bool:
        """A transport call worked: the outage, if there was one, is over; True when one just ended."""
        if self.up:
            return False
        now = time.time()
        if self.failures:
            log.info("transport.restored", down_for=round(now - self.since, 3), failures=self.failures)
        self.up, self.since, self.failures, self._next_try = True, now, 0, 0.0
        return True

    def failed(self, error: Exception) -> None:
        """A transport call failed: logged once per outage; the next try waits on the backoff."""
        self.failures += 1
        self.error = str(error)
        if self.up or self.failures == 1:
            log.warning("transport.unavailable", error=self.error)
        if self.up:
            self.up, self.since = False, time.time()
        self._next_try = time.monotonic() + TRANSPORT_RETRY.delay(self.failures)

    def seen(self, reported: TransportHealth) -> TransportHealth:
        """The transport's state as the loop saw it and as the transport reports it: down if
        either says so, since the earlier of their down times."""
        if not reported.connected and not self.up:
            return TransportHealth(False, min(self.since, reported.since), reported.last_error or self.error)
        if not reported.connected:
            return reported
        if not self.up:
            return TransportHealth(False, self.since, self.error)
        return TransportHealth(True, max(self.since, reported.since))


def healthy(transport: TransportHealth, now: float, down_after: float = DOWN_AFTER_S) -> bool:
    """Up, or not down (nor unreached) for longer than ``down_after``."""
    return transport.connected or now - transport.since <= down_after


@dataclass(frozen=True)
class Heartbeat:
    """What the loop publishes about itself for ``exchange check``: written atomically, read whole."""

    agency: str
    pid: int
    at: float
    """Wall time of the loop pass that wrote it."""
    running: bool
    """False in the last heartbeat of a node that stopped."""
    transport_up: bool
    since: float
    """Wall time the transport's current state began."""
    error: str
    """The transport's last error ("" if none yet)."""
    rules_digest: str = ""
    """The digest of the rule set in force in the running node (not of the files on disk)."""
    crl_seconds_left: float | None = None
    """Until the CRL in force goes stale (negative: it has); None without a CRL."""
    webhook_backlog: int = 0
    """Webhook pushes waiting for the agency system."""
    certificate_not_after: float | None = None
    """When the certificate the node signs with expires (epoch seconds); None if unknown."""
    config_version: int | None = None
    """The configuration bundle in force (None: none installed)."""
    config_expires: float | None = None
    """When that bundle expires (epoch seconds)."""

    @classmethod
    def of(cls, agency: str, transport: TransportHealth, *, running: bool = True, rules_digest: str = "",
           crl_seconds_left: float | None = None, webhook_backlog: int = 0,
           certificate_not_after: float | None = None, config_version: int | None = None,
           config_expires: float | None = None) -> Heartbeat:
        return cls(agency, os.getpid(), time.time(), running, transport.connected, transport.since,
                   transport.last_error, rules_digest, crl_seconds_left, webhook_backlog, certificate_not_after,
                   config_version, config_expires)

    def write(self, state_dir: Path) -> None:
        write_atomic(state_dir / HEARTBEAT_FILE, json.dumps(asdict(self)).encode(), sync=False)

    @classmethod
    def read(cls, state_dir: Path) -> Heartbeat | None:
        """The last heartbeat, or None if there is none (or it cannot be read as one)."""
        try:
            return cls(**json.loads((state_dir / HEARTBEAT_FILE).read_bytes()))
        except (OSError, ValueError, TypeError):
            return None

    def problems(self, now: float, *, stale_after: float = STALE_AFTER_S,
                 down_after: float = DOWN_AFTER_S) -> list[str]:
        """Why this heartbeat says the node is unhealthy at ``now``; empty if it is healthy."""
        if not self.running:
            return [f"the node stopped at {clock.utc(dt.datetime.fromtimestamp(self.at, dt.UTC))}"]
        if now - self.at > stale_after:
            return [f"the loop last ran {now - self.at:.0f}s ago (pid {self.pid}): not running, or stuck"]
        problems = []
        if not healthy(TransportHealth(self.transport_up, self.since), now, down_after):
            problems.append(f"the transport has been down for {now - self.since:.0f}s: "
                            f"{self.error or 'never reached'}")
        if self.crl_seconds_left is not None and self.crl_seconds_left - (now - self.at) <= 0:
            problems.append("the CRL in force is out of date: revoked certificates would go unnoticed; "
                            "publish a fresh CRL and reload (SIGHUP)")
        if self.certificate_not_after is not None and self.certificate_not_after <= now:
            expired = clock.utc(dt.datetime.fromtimestamp(self.certificate_not_after, dt.UTC))
            problems.append(f"the node's certificate expired at {expired}: peers refuse what it signs; install a "
                            "renewed certificate and key and reload (SIGHUP)")
        if self.config_expires is not None and self.config_expires <= now:
            expired = clock.utc(dt.datetime.fromtimestamp(self.config_expires, dt.UTC))
            problems.append(f"the configuration bundle in force (version {self.config_version}) expired at {expired}: "
                            "install the authority's newer bundle (exchange config install)")
        if self.webhook_backlog > WEBHOOK_BACKLOG_MAX:
            problems.append(f"{self.webhook_backlog} webhook pushes wait for the agency system "
                            f"(more than {WEBHOOK_BACKLOG_MAX})")
        return problems

    def details(self, now: float) -> dict[str, object]:
        """What ``exchange check --json`` prints: the heartbeat, with its age and the CRL's time left now."""
        left = None if self.crl_seconds_left is None else round(self.crl_seconds_left - (now - self.at))
        certificate: dict[str, object] = {}
        if self.certificate_not_after is not None:
            days = days_left(self.certificate_not_after, now)
            certificate = {
                "certificate_not_after": clock.utc(dt.datetime.fromtimestamp(self.certificate_not_after, dt.UTC)),
                "certificate_days_left": days, "certificate_expiring": days < CERT_WARN_DAYS}
        if self.config_expires is not None:
            days = days_left(self.config_expires, now)
            certificate.update({"config_expires": clock.utc(dt.datetime.fromtimestamp(self.config_expires, dt.UTC)),
                                "config_days_left": days, "config_expiring": days < CONFIG_WARN_DAYS})
        return {**asdict(self), "age_seconds": round(now - self.at, 1), "crl_seconds_left": left, **certificate}


def judge(state_dir: Path, now: float, *, stale_after: float = STALE_AFTER_S,
          down_after: float = DOWN_AFTER_S) -> list[str]:
    """What is wrong with the node whose state directory is ``state_dir``, from its heartbeat."""
    beat = Heartbeat.read(state_dir)
    if beat is None:
        return [f"no heartbeat in {state_dir / HEARTBEAT_FILE}: the node is not running"]
    return beat.problems(now, stale_after=stale_after, down_after=down_after)


def database_view(config: NodeConfig) -> dict[str, Any]:
    """The node's database as ``exchange check`` reports it: outbox counts and the audit log's
    size. Only the database is opened: not the rules, keys or trust store, which a running node
    holds in memory."""
    store = Store(config.database)
    try:
        return {"outbox": store.counts(), "audit_entries": AuditLog(store.conn, str(config.agency)).size}
    finally:
        store.close()
