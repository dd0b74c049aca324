"""Every retry policy the node keeps in its database: a name, a bound, an exponential backoff.

The retries these policies govern outlive the process (a transfer's next attempt is a column of
its outbox row), so they are not tenacity loops: a policy only answers "how long before attempt
n" and "is attempt n the last". Reconnecting to the broker, a loop inside one call, keeps its
tenacity policy in the AMQP adapter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Wait ``first`` seconds after the first attempt, doubling up to ``maximum``, each wait spread
    by ±``jitter`` (and never above ``maximum``); give up after ``attempts`` attempts."""

    first: float
    maximum: float
    attempts: int
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.maximum or self.attempts < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"not a backoff: {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1 for the first) before the next."""
        exponent = min(max(0, attempt - 1), 64)  # 2**64 * first is past any maximum
        base = min(self.maximum, self.first * 2.0 ** exponent)
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - jitter, not cryptography
        return min(self.maximum, base * spread)

    def exhausted(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` was the last one allowed."""
        return attempt >= self.attempts


TRANSFER_RETRANSMISSION = Backoff(first=5.0, maximum=600.0, attempts=10)
"""A transfer without a receipt: ten publications over about half an hour, then dead-lettered."""
PUBLISH_FAILURE = Backoff(first=1.0, maximum=30.0, attempts=10)
"""A publication the broker did not confirm. A transport that is down is retried on this backoff
for as long as it takes (an outage is not the envelope's fault: health reports it); an error
about the one message (a nack) gives up after ``attempts``."""
WEBHOOK_PUSH = Backoff(first=2.0, maximum=300.0, attempts=12)
"""A webhook the agency system does not take: twelve pushes over about 25 minutes, then dead-lettered."""
