"""Webhooks: push each incoming dossier and status update to the agency system's URL.

A door: a webhook is queued in the same transaction that records the delivery, pushed on the
door's own thread (an agency system that answers slowly, or not at all for ``TIMEOUT_S``, never
holds up the node's loop; the housekeeping only wakes the pusher), retried on ``WEBHOOK_PUSH``'s
backoff while the agency system is down, recorded in the audit log when it lands, and
dead-lettered (logged and audited) at the bound. The URL and token are read from the node's
configuration at each round of pushes, so a reload (SIGHUP) changes them; with no URL configured
nothing is queued. The standard library's HTTP client is enough for one POST of JSON to a
configured local URL.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import structlog

from exchange.audit.entries import Event
from exchange.errors import ConfigError, ExchangeError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.retry import WEBHOOK_PUSH
from exchange.store.node import PendingWebhook

log = structlog.get_logger(__name__)

TIMEOUT_S = 10.0
BATCH = 50
"""Pushes per round, at most, before the pusher looks at its stop flag again."""
IDLE_S = 1.0
"""The pusher looks for due pushes this often when nothing wakes it."""


class Webhooks(Door):
    """The webhook door of one node: the loop's housekeeping wakes a pusher thread, which works
    over a database connection of its own (``NodeContext.for_thread``)."""

    def __init__(self) -> None:
        self._node: NodeContext | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT_S + 5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(IDLE_S)
            self._wake.clear()
            node = self._node
            if node is None or not node.config.webhook:
                continue
            try:
                with node.for_thread() as ctx:
                    self.push(ctx)
            except ExchangeError as exc:  # the database busy, say: the next round tries again
                log.warning("webhook.round_failed", error=str(exc))

    def check(self, config: NodeConfig) -> None:
        if config.webhook and not config.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL {config.webhook!r}: expected http:// or https://")

    def delivered(self, ctx: NodeContext, message_ids: Sequence[str]) -> None:
        if not ctx.config.webhook:
            return
        now = time.time()
        for message_id in message_ids:
            ctx.store.webhook_enqueue(message_id, now)

    def poll(self, ctx: NodeContext) -> int:
        """Housekeeping: wake the pusher (it takes the loop's context, for its configuration)."""
        self._node = ctx
        self._wake.set()
        return 0

    def push(self, ctx: NodeContext) -> int:
        """Push what is due, on the caller's thread; returns how many landed."""
        if not ctx.config.webhook:
            return 0
        landed = 0
        for due in ctx.store.webhooks_due(time.time(), BATCH):
            if self._stopping.is_set():
                break
            error = _post(ctx.config, _document(due))
            landed += self._record(ctx, due, error)
        return landed

    def _record(self, ctx: NodeContext, due: PendingWebhook, error: str | None) -> int:
        attempt = due.attempts + 1
        record = due.inbox
        about = {"dossier": record.dossier, "step": record.step, "message_id": record.message_id,
                 "counterpart": record.sender}
        with ctx.store.transaction():
            if error is None:
                ctx.store.webhook_done(record.message_id, attempt)
                ctx.record(ctx.entry(Event.DELIVERED, envelope_sha256=record.envelope_sha256, **about,
                                     detail={"via": "webhook", "attempt": str(attempt)}))
                return 1
            dead = WEBHOOK_PUSH.exhausted(attempt)
            ctx.store.webhook_retry(record.message_id, attempt, time.time() + WEBHOOK_PUSH.delay(attempt), error,
                                    dead=dead)
            if dead:
                ctx.record(ctx.entry(Event.DEAD_LETTERED, **about, detail={"via": "webhook", "reason": error}))
        if dead:
            log.error("webhook.dead_lettered", message=record.message_id, error=error)
        else:
            log.warning("webhook.retry", message=record.message_id, attempt=attempt, error=error)
        return 0


def _document(due: PendingWebhook) -> dict[str, object]:
    record = due.inbox
    return {"kind": record.kind, "dossier": record.dossier, "step": record.step, "from": record.sender,
            "message_id": record.message_id, "payload": (record.payload or b"").decode("utf-8")}


def _post(config: NodeConfig, document: dict[str, object]) -> str | None:
    """POST ``document``; None when the agency system took it, else what went wrong."""
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked before a config is in force
        config.webhook, data=json.dumps(document, ensure_ascii=False).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    if config.token:
        request.add_header("Authorization", f"Bearer {config.token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - a configured URL
            response.read()
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
