"""The states a stored row can be in. Their values are what the database holds: never rename one."""

from __future__ import annotations

from enum import StrEnum


class OutboxState(StrEnum):
    """Where an outgoing envelope is on its way to the broker and back."""

    PENDING = "pending"  # sealed, not yet confirmed by the broker (or due again)
    PUBLISHED = "published"  # confirmed by the broker; a transfer waits for its receipt
    ACKNOWLEDGED = "acknowledged"  # the recipient's receipt accepted it
    REFUSED = "refused"  # the recipient's receipt refused it
    SENT = "sent"  # a receipt, confirmed by the broker: nothing comes back for it
    DEAD = "dead"  # given up at the retry bound, or unroutable; an operator may replay it

    @classmethod
    def due(cls) -> tuple[OutboxState, ...]:
        """The states the dispatcher (re)publishes."""
        return (cls.PENDING, cls.PUBLISHED)


class StepState(StrEnum):
    """A step of a dossier's route, as this node knows it."""

    PENDING = "pending"  # waiting for the steps it comes after
    READY = "ready"  # this node's agency can do it now
    SENT = "sent"  # handed off to its performer: the transfer is on its way
    RECEIVED = "received"  # its performer's receipt came back
    WAITING = "waiting"  # its performer asked for more documents: it waits for the desk's supplement
    DONE = "done"
    CANCELLED = "cancelled"  # the dossier ended (refused, withdrawn) before this step was done


class DossierState(StrEnum):
    """A dossier as this node holds it: still on its route, or finished one way or the other."""

    PROCESSING = "processing"
    PAUSED = "paused"  # waiting for the applicant (a fee, a financial obligation)
    SUPPLEMENT_REQUESTED = "supplement-requested"  # back at the desk for more documents
    COMPLETED = "completed"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"

    @property
    def final(self) -> bool:
        return self in (DossierState.COMPLETED, DossierState.REFUSED, DossierState.WITHDRAWN)


class Outcome(StrEnum):
    """What became of one incoming envelope."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # known already: its receipt is sent again, nothing is delivered twice
    REFUSED = "refused"


class Result(StrEnum):
    """What the agency decided at a step (``exchange done --result``)."""

    ACCEPTED = "accepted"
    """The step is done and the dossier goes on along its route."""
    REFUSED = "refused"
    """The applicant is not eligible: the dossier stops here."""
    SUPPLEMENT = "supplement"
    """More documents are needed: the dossier goes back to the desk, the clock pauses."""


class WebhookState(StrEnum):
    """A push of one delivery to the agency system's webhook."""

    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"
