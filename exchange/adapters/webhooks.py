"""Webhooks: push each incoming dossier and status update to the agency system's URL.

A door: a webhook is queued in the same transaction that records the delivery, pushed by the
housekeeping, retried on ``WEBHOOK_PUSH``'s backoff while the agency system is down, recorded in
the audit log when it lands, and dead-lettered (logged and audited) at the bound. The URL and
token are read from the node's configuration at each push, so a reload (SIGHUP) changes them;
with no URL configured nothing is queued. The standard library's HTTP client is enough for one
POST of JSON to a configured local URL.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import structlog

from exchange.audit.entries import Event
from exchange.errors import ConfigError
from exchange.node.config import NodeConfig
from exchange.node.context import NodeContext
from exchange.node.doors import Door
from exchange.retry import WEBHOOK_PUSH
from exchange.store.node import PendingWebhook

log = structlog.get_logger(__name__)

TIMEOUT_S = 10.0
BATCH = 50
"""Pushes per housekeeping pass, at most: one slow agency system must not hold up the loop long."""


class Webhooks(Door):
    """The webhook door of one node."""

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
        """Push what is due; returns how many landed."""
        if not ctx.config.webhook:
            return 0
        landed = 0
        for due in ctx.store.webhooks_due(time.time(), BATCH):
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
