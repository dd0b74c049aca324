"""The one error tree of the project.

Bad input is kept apart from infrastructure faults, and each refusal of an
envelope has a stable reason code, because signed receipts carry that code::

    ExchangeError
    ├── InvalidInput                 bad input from a person, a file or a peer
    │   ├── InvalidCode              an agency, dossier or procedure code
    │   ├── InvalidDossier           a dossier file that is not a valid dossier
    │   ├── ConfigError              a missing or malformed file or setting
    │   │   └── RecipientUnknown         no certificate to encrypt a dossier to, and encryption required
    │   ├── RuleError                routing rules that do not load; ``problems`` lists each
    │   ├── RoutingError             a question the rules cannot answer (unknown procedure...)
    │   ├── UnknownDossier           no such dossier (or step) at this node
    │   ├── AlreadySubmitted         a dossier code this node has taken in before
    │   ├── StepNotReady             a step this node cannot report done now
    │   └── InvalidEnvelope          an envelope refused; ``reason_code`` says why
    │       ├── TooLarge                 too-large
    │       ├── MalformedXml             malformed-xml
    │       ├── SchemaViolation          schema-violation
    │       │   └── BadShape                 bad-shape: outside the profile's caps, before the schema
    │       ├── BadSignature             bad-signature
    │       ├── UntrustedSigner          untrusted-signer
    │       ├── Revoked                  revoked
    │       ├── Expired                  expired
    │       ├── SenderMismatch           sender-mismatch
    │       ├── DigestMismatch           digest-mismatch
    │       ├── NotAuthorized            not-authorized
    │       ├── EnvelopeExpired          envelope-expired
    │       ├── NotForThisRecipient      not-for-this-recipient: encrypted to another agency or certificate
    │       └── Undecryptable            undecryptable: an encrypted payload that does not decrypt
    ├── PkiError                     the local PKI could not do what was asked
    ├── StoreError                   the node's database failed (disk, damage); retry after a look
    │   └── StoreBusy                    another process held the database past the busy timeout
    ├── AuditError                   the audit log refused an operation (nothing to prove against...)
    │   ├── LogDamaged                   this node's own log no longer holds: a hash missing or changed
    │   └── Unverifiable                 a checkpoint, key or entry that does not parse or verify
    └── TransportError               the transport could not do what was asked (retry later)
        ├── Unroutable                   no queue for that recipient: nobody would get it
        ├── PublishRejected              the broker refused the message (nack)
        ├── TransportUnavailable         not connected, and not within the time allowed
        ├── StaleDelivery                an ack for a delivery from before a reconnect
        ├── AccessRefused                the broker refused these credentials or permissions
        └── BrokerUntrusted              the broker's TLS certificate is not trusted, or not for that host
"""

from __future__ import annotations

from dataclasses import dataclass


class ExchangeError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidInput(ExchangeError):
    """Input that is wrong; retrying it unchanged will fail the same way."""


class InvalidCode(InvalidInput, ValueError):
    """An identifier that does not have the form its standard requires."""


class InvalidDossier(InvalidInput):
    """A dossier document that is not well-formed or not valid."""


class ConfigError(InvalidInput):
    """A configuration file or setting that is missing or malformed."""


class RecipientUnknown(ConfigError):
    """``[privacy] encrypt = "always"`` and no certificate of the recipient agency: the hand-off is
    refused rather than sent in clear."""


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in a rule file, where an editor can jump to it."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RuleError(InvalidInput):
    """Routing rules that cannot be loaded; every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(sorted(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class RoutingError(InvalidInput):
    """A routing question the rules cannot answer: an unknown procedure, origin or step."""


class UnknownDossier(InvalidInput):
    """This node holds no such dossier, or no such step of it."""


class AlreadySubmitted(InvalidInput):
    """A dossier whose code this node has taken in before: submitting it again changes nothing."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(f"dossier {code} was already submitted")


class StepNotReady(InvalidInput):
    """A step reported done that this node cannot do now: another agency's, waiting, or done."""


class PkiError(ExchangeError):
    """The local certificate authority could not perform an operation."""


class StoreError(ExchangeError):
    """The node's database failed: a disk or I/O error, a damaged file."""


class StoreBusy(StoreError):
    """Another process (the node, an operator's command) held the database's write lock for
    longer than the busy timeout; the same operation can be tried again."""


class AuditError(ExchangeError):
    """The audit log refused an operation; the subclasses say when it is more than a refusal."""


class LogDamaged(AuditError):
    """This node's own audit database no longer holds: a stored hash is missing, or the tree no
    longer matches a checkpoint the node signed. Nothing more is signed until an operator looks."""


class Unverifiable(AuditError):
    """A checkpoint, verifier key, bundle or entry that does not parse or whose signature does not
    verify: the fault is in what was given, not in this node's log."""


class InvalidEnvelope(InvalidInput):
    """An envelope that this node refuses; subclasses carry the reason code."""

    reason_code = "invalid-envelope"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason_code}: {self.message}"


class BundleRefused(InvalidInput):
    """A configuration bundle this node refuses; subclasses carry the reason code."""

    reason_code = "config-malformed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason_code}: {self.message}"


class BundleBadSignature(BundleRefused):
    """Not signed by the configuration authority this node trusts, or altered since."""

    reason_code = "config-bad-signature"


class BundleRollback(BundleRefused):
    """A version not newer than the one the node has."""

    reason_code = "config-rollback"


class BundleExpired(BundleRefused):
    reason_code = "config-expired"


class TooLarge(InvalidEnvelope):
    """The input exceeds the byte-size cap; it was not parsed."""

    reason_code = "too-large"


class MalformedXml(InvalidEnvelope):
    """The input is not well-formed XML, or uses forbidden XML features."""

    reason_code = "malformed-xml"

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


class SchemaViolation(InvalidEnvelope):
    """The document is well-formed but does not match its schema."""

    reason_code = "schema-violation"


class BadShape(SchemaViolation):
    """The tree is outside its profile (too many nodes or attributes, too deep, or not exactly
    the children an envelope or its signature holds); refused before any costlier check."""

    reason_code = "bad-shape"


class BadSignature(InvalidEnvelope):
    """The XML signature is missing, malformed, misplaced or does not verify."""

    reason_code = "bad-signature"


class UntrustedSigner(InvalidEnvelope):
    """The signing certificate does not chain to the configured trust store."""

    reason_code = "untrusted-signer"


class Revoked(InvalidEnvelope):
    """The signing certificate is on the trusted CA's revocation list."""

    reason_code = "revoked"


class Expired(InvalidEnvelope):
    """The signing certificate was not valid at signing time or is not valid now."""

    reason_code = "expired"


class SenderMismatch(InvalidEnvelope):
    """The certificate's agency code differs from the envelope's sender."""

    reason_code = "sender-mismatch"


class DigestMismatch(InvalidEnvelope):
    """The signed payload digest in the header does not match the body, or the kinds disagree."""

    reason_code = "digest-mismatch"


class NotAuthorized(InvalidEnvelope):
    """A valid envelope from an agency that the routing rules do not name for that step."""

    reason_code = "not-authorized"


class ConfigMismatch(NotAuthorized):
    """Not authorized by this node's rules, and the sender runs another configuration bundle: the
    sender tries again once the two run the same."""

    reason_code = "config-mismatch"


class AgencyAbolished(NotAuthorized):
    """New work for an agency that no longer exists: its successor takes it."""

    reason_code = "agency-abolished"


class EnvelopeExpired(InvalidEnvelope):
    """The envelope's own expiry time has passed."""

    reason_code = "envelope-expired"


class NotForThisRecipient(InvalidEnvelope):
    """An encrypted payload addressed otherwise than the envelope or the key says (re-addressed)."""

    reason_code = "not-for-this-recipient"


class Undecryptable(InvalidEnvelope):
    """An encrypted payload that does not decrypt (tampered, wrong key) or that no key was given for."""

    reason_code = "undecryptable"


REFUSALS: tuple[type[InvalidEnvelope], ...] = (
    TooLarge,
    MalformedXml,
    SchemaViolation,
    BadShape,
    BadSignature,
    UntrustedSigner,
    Revoked,
    Expired,
    SenderMismatch,
    DigestMismatch,
    NotAuthorized,
    EnvelopeExpired,
    NotForThisRecipient,
    Undecryptable,
)
"""Every refusal class, so receipts can map a reason code back to its meaning."""


class TransportError(ExchangeError):
    """The transport failed to do what was asked; the message may be retried."""


class Unroutable(TransportError):
    """No queue is bound for the recipient: publishing would lose the message, so it was refused."""


class PublishRejected(TransportError):
    """The broker negatively acknowledged the message (nack)."""


class TransportUnavailable(TransportError):
    """The transport is not connected and did not reconnect in the time allowed."""


class StaleDelivery(TransportError):
    """An ack or nack for a delivery received before a reconnect; the broker redelivers it."""


class AccessRefused(TransportError):
    """The broker refused the credentials, or the user may not touch that exchange or queue."""


class BrokerUntrusted(TransportError):
    """The broker's TLS certificate does not chain to the configured CA, or does not name the
    host of the broker's URL: the node refuses to talk to it (a configuration error, or worse)."""
