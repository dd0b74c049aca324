"""Envelopes verified in worker processes, so that a receiving node's loop records one window
while another core verifies the next.

Verifying (parse, shape and schema checks, the signature, the payload's digest, decryption:
``Opener.open``) is the largest share of a receiving node's work, and threads cannot share it
(the GIL). A worker process opens each envelope with an exact copy of the loop's opener: the
same trust anchors and CRLs (sent by value: they are public), the same size limit and the same
decryption key, which the worker loads from the node's key file itself (no secret crosses the
pipe) and which must be the loop's (else the worker does not start).

A verdict is the loop's own: ``Opened`` holds what was signed (the payload as bytes, which the
loop parses again with its hardened parser, and the signer's certificate, which the loop's trust
store checks again and returns from its cache), a refusal is the very ``InvalidEnvelope``. When
the loop's opener changes (a reload, a new CRL, a bundle applied), the pool is replaced and the
verdicts of the old one are not used: the loop opens those envelopes itself, as it does whenever
the pool is not ready, broke, or failed on one envelope (``None``: verify in the loop). Nothing
here decides alone what the node accepts.
"""

from __future__ import annotations

import base64
import concurrent.futures
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from exchange.clock import now
from exchange.codes import AgencyCode
from exchange.envelope.encryption import Recipient
from exchange.envelope.model import Header, VerifiedEnvelope
from exchange.envelope.sealing import Opener
from exchange.envelope.trust import TrustStore
from exchange.errors import ConfigError, InvalidEnvelope
from exchange.xml import safexml

log = structlog.get_logger(__name__)

PARENT_POLL_S = 1.0
"""How often a worker checks that the node that started it still runs (a killed node's workers
would otherwise wait on their queue for ever)."""


@dataclass(frozen=True)
class Opened:
    """An envelope a worker verified: what ``VerifiedEnvelope`` holds, in a form that pickles."""

    header: Header
    payload: bytes
    payload_digest: str
    signer: AgencyCode
    signer_fingerprint: str
    envelope_digest: str
    certificate: str
    """The signer's certificate, base64 DER: what the loop's trust store caches its checks on."""
    encrypted_for: str | None
    payload_encrypted: bool

    def admit(self, opener: Opener, source: str) -> VerifiedEnvelope:
        """The envelope as the loop's ``open`` would give it; a signer the loop's trust store no
        longer accepts (its certificate expired a moment ago) is refused here."""
        signer = opener.trust.check_encoded(self.certificate, opener.clock())
        payload = safexml.parse(self.payload, max_bytes=opener.max_bytes, source=f"{source}: payload")
        return VerifiedEnvelope(self.header, payload, self.payload_digest, self.signer, self.signer_fingerprint,
                                self.envelope_digest, signer.cert, self.encrypted_for, self.payload_encrypted)


Verdict = Opened | InvalidEnvelope | None
"""Verified, refused, or ``None``: not judged here, the loop opens it itself."""


@dataclass(frozen=True)
class OpenerCopy:
    """What a worker builds its opener from."""

    anchors: tuple[bytes, ...]
    crls: tuple[bytes, ...]
    max_bytes: int
    keyless: bool
    cert: Path | None
    key: Path | None
    recipient_fingerprint: str | None

    @classmethod
    def of(cls, opener: Opener, cert: Path, key: Path) -> OpenerCopy:
        recipient = opener.recipient
        return cls(tuple(a.public_bytes(Encoding.DER) for a in opener.trust.anchors),
                   tuple(c.public_bytes(Encoding.DER) for c in opener.trust.crls), opener.max_bytes,
                   opener.keyless, cert if recipient else None, key if recipient else None,
                   recipient.fingerprint if recipient else None)

    def build(self) -> Opener:
        recipient = None
        if self.cert is not None and self.key is not None:
            recipient = Recipient.load(self.cert, self.key)
            if recipient.fingerprint != self.recipient_fingerprint:
                raise ConfigError(f"{self.key}: the key on disk is not the one the node runs with; "
                                  "verifying in the loop until the node reloads")
        trust = TrustStore(tuple(x509.load_der_x509_certificate(a) for a in self.anchors),
                           tuple(x509.load_der_x509_crl(c) for c in self.crls))
        return Opener(trust, self.max_bytes, recipient=recipient, keyless=self.keyless)


class VerifierPool:
    """``workers`` processes opening envelopes with a copy of ``opener``. Its workers start in the
    background: until they are ready, ``submit`` says no and the loop verifies by itself."""

    @classmethod
    def start(cls, opener: Opener, cert: Path, key: Path, workers: int) -> VerifierPool | None:
        """A pool, unless ``workers`` is 0 or the opener reads another clock than the node's (a
        worker could not follow it)."""
        if workers <= 0 or opener.clock is not now:
            return None
        return cls(opener, cert, key, workers)

    def __init__(self, opener: Opener, cert: Path, key: Path, workers: int) -> None:
        self.opener = opener
        self.workers = workers
        self._broken = False
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker,
                                             initargs=(OpenerCopy.of(opener, cert, key), os.getpid()))
        self._warm = [self._executor.submit(_ready) for _ in range(workers)]

    @property
    def ready(self) -> bool:
        """Every worker started, and none failed."""
        if self._broken or not all(f.done() for f in self._warm):
            return False
        if any(f.exception() is not None for f in self._warm):
            self._broken = True
            log.error("verifiers.failed_to_start", error=str(next(f.exception() for f in self._warm
                                                                   if f.exception() is not None)))
            return False
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the workers to start; whether they all did."""
        concurrent.futures.wait(self._warm, timeout)
        return self.ready

    def serves(self, opener: Opener) -> bool:
        """Whether this pool verifies with ``opener`` (the loop's, unless it was replaced since)."""
        return opener is self.opener

    def submit(self, bodies: Sequence[tuple[str, bytes]]) -> Batch | None:
        """The (source, body) pairs handed to the workers (split among them), or None if the pool
        cannot take them now."""
        if not bodies or not self.ready:
            return None
        size = -(-len(bodies) // self.workers)
        try:
            parts = [self._executor.submit(_open_all, list(bodies[i:i + size])) for i in range(0, len(bodies), size)]
        except (concurrent.futures.BrokenExecutor, RuntimeError) as exc:
            self._fail(exc)
            return None
        return Batch(self, parts, len(bodies))

    def _fail(self, exc: BaseException) -> None:
        if not self._broken:
            self._broken = True
            log.error("verifiers.broken", error=repr(exc))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class Batch:
    """A window's bodies in the workers' hands."""

    pool: VerifierPool
    parts: list[Future[list[Verdict]]]
    size: int

    def verdicts(self, opener: Opener) -> list[Verdict]:
        """Each body's verdict once the workers are done; all ``None`` if the pool broke meanwhile
        or verifies with an opener that is no longer ``opener``."""
        try:
            verdicts = [verdict for part in self.parts for verdict in part.result()]
        except concurrent.futures.CancelledError:  # the pool was replaced meanwhile
            return [None] * self.size
        except concurrent.futures.BrokenExecutor as exc:
            self.pool._fail(exc)
            return [None] * self.size
        except Exception as exc:  # noqa: BLE001 - a batch the workers could not return: the loop verifies it
            log.error("verifiers.batch_failed", error=repr(exc))
            return [None] * self.size
        return verdicts if self.pool.serves(opener) else [None] * self.size


# In the worker process --------------------------------------------------------------------

_worker: dict[str, Opener] = {}
"""The worker process's opener. Module state, because a process pool's worker has no other place
to keep what its initializer built; the loop's process never touches it."""


def _start_worker(copy: OpenerCopy, parent: int) -> None:
    # The node's signals are for the node: Ctrl-C and SIGHUP reach the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _worker["opener"] = copy.build()
    threading.Thread(target=_follow_parent, args=(parent,), name="parent", daemon=True).start()


def _follow_parent(parent: int) -> None:
    while os.getppid() == parent:
        threading.Event().wait(PARENT_POLL_S)
    os._exit(0)


def _ready() -> bool:
    return "opener" in _worker


def _open_all(bodies: list[tuple[str, bytes]]) -> list[Verdict]:
    opener = _worker["opener"]
    return [_open(opener, source, body) for source, body in bodies]


def _open(opener: Opener, source: str, body: bytes) -> Verdict:
    try:
        env = opener.open(body, source=source)
    except InvalidEnvelope as refusal:
        return refusal
    except Exception:  # noqa: BLE001 - the loop opens it again and meets the fault itself
        return None
    cert = env.signer_certificate
    if cert is None:
        return None
    return Opened(env.header, bytes(etree.tostring(env.payload, with_tail=False)), env.payload_digest, env.signer,
                  env.signer_fingerprint, env.envelope_digest,
                  base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii"), env.encrypted_for,
                  env.payload_encrypted)


__all__ = ["Batch", "Opened", "Verdict", "VerifierPool"]

