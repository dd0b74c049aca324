"""The retry policies: exponential backoff with jitter, within named bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.retry import TRANSFER_RETRANSMISSION, WEBHOOK_PUSH, Backoff


def test_the_named_policies() -> None:
    """Transfers: 5 s doubling to 10 min, 10 attempts; webhooks: 2 s doubling to 5 min, 12 attempts."""
    assert (TRANSFER_RETRANSMISSION.first, TRANSFER_RETRANSMISSION.maximum, TRANSFER_RETRANSMISSION.attempts) == (
        5.0, 600.0, 10)
    assert (WEBHOOK_PUSH.first, WEBHOOK_PUSH.maximum, WEBHOOK_PUSH.attempts) == (2.0, 300.0, 12)


@given(policy=st.sampled_from([TRANSFER_RETRANSMISSION, WEBHOOK_PUSH]), attempt=st.integers(1, 10_000))
def test_delay_stays_within_its_bounds(policy: Backoff, attempt: int) -> None:
    """Every delay is the doubled wait give or take the jitter, never below the first wait's
    lower edge and never above the maximum, however many attempts were made."""
    nominal = min(policy.maximum, policy.first * 2.0 ** min(attempt - 1, 64))
    delay = policy.delay(attempt)
    assert nominal * (1 - policy.jitter) <= delay <= min(policy.maximum, nominal * (1 + policy.jitter))
    assert policy.first * (1 - policy.jitter) <= delay <= policy.maximum


def test_gives_up_at_the_bound() -> None:
    """The attempt numbered ``attempts`` is the last; those before are not."""
    assert not TRANSFER_RETRANSMISSION.exhausted(9)
    assert TRANSFER_RETRANSMISSION.exhausted(10)
    assert WEBHOOK_PUSH.exhausted(12)


def test_nonsense_policies_are_refused() -> None:
    """A policy with no first wait, a maximum below it, no attempts or a jitter of 100 % is an error."""
    for first, maximum, attempts, jitter in ((0, 1, 1, 0.2), (2, 1, 1, 0.2), (1, 2, 0, 0.2), (1, 2, 1, 1.0)):
        with pytest.raises(ValueError, match="not a backoff"):
            Backoff(first, maximum, attempts, jitter)
