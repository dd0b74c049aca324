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

import structlog

from exchange import clock
from exchange.files import write_atomic
from exchange.node.transport import TransportHealth
from exchange.retry import Backoff

log = structlog.get_logger(__name__)

DOWN_AFTER_S = 30.0
"""A transport down (or never reached) for longer than this makes the node unhealthy."""
STALE_AFTER_S = 10.0
"""A heartbeat older than this means the loop is not running."""
HEARTBEAT_EVERY_S = 1.0
"""The loop rewrites its heartbeat at most this often."""
HEARTBEAT_FILE = "heartbeat.json"
"""In the node's state directory."""
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

    @classmethod
    def of(cls, agency: str, transport: TransportHealth, *, running: bool = True) -> Heartbeat:
        return cls(agency, os.getpid(), time.time(), running, transport.connected, transport.since,
                   transport.last_error)

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
        if not healthy(TransportHealth(self.transport_up, self.since), now, down_after):
            return [f"the transport has been down for {now - self.since:.0f}s: {self.error or 'never reached'}"]
        return []


def judge(state_dir: Path, now: float, *, stale_after: float = STALE_AFTER_S,
          down_after: float = DOWN_AFTER_S) -> list[str]:
    """What is wrong with the node whose state directory is ``state_dir``, from its heartbeat."""
    beat = Heartbeat.read(state_dir)
    if beat is None:
        return [f"no heartbeat in {state_dir / HEARTBEAT_FILE}: the node is not running"]
    return beat.problems(now, stale_after=stale_after, down_after=down_after)
