"""Signed tree heads in the C2SP tlog-checkpoint / signed-note format, with Ed25519.

A checkpoint is a note whose body is three lines (origin, tree size, base64 root), followed by
a blank line and one signature line ``— <key name> <base64(key hash || signature)>``. The key
hash is the first four bytes of SHA-256(key name || "\\n" || 0x01 || public key). Verifier keys
are written ``<name>+<hex key hash>+<base64(0x01 || public key)>``.

The checkpoint key is apart from the agency's XML-signing key. The agency key *attests* it (an
ECDSA signature over the verifier string), so an auditor holding only the province's CA and the
agency certificate can tell which checkpoint keys belonged to the node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from exchange import clock
from exchange.audit.entries import Entry, Event
from exchange.audit.log import AuditLog
from exchange.errors import AuditError, ConfigError, LogDamaged, Unverifiable
from exchange.files import write_atomic, write_private
from exchange.store import audit as rows

ED25519 = b"\x01"
DASH = "\u2014"
ATTESTATION_CONTEXT = b"vn-exchange checkpoint key v1\n"

log = structlog.get_logger(__name__)


def origin_for(agency: str) -> str:
    return f"vn-exchange/audit/{agency}"


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A checkpoint verifier key: a name and an Ed25519 public key."""

    name: str
    public: bytes

    @property
    def key_hash(self) -> bytes:
        return _key_hash(self.name, self.public)

    def __str__(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{base64.b64encode(ED25519 + self.public).decode()}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            name, hash_hex, key_b64 = text.strip().split("+", 2)  # names never hold "+"
            raw = base64.b64decode(key_b64, validate=True)
        except (ValueError, binascii.Error):
            raise Unverifiable(f"not a verifier key (name+hash+key): {text.strip()[:80]!r}") from None
        if raw[:1] != ED25519 or len(raw) != 33:
            raise Unverifiable("verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_hash.hex() != hash_hex:
            raise Unverifiable(f"verifier key hash {hash_hex} does not match its key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class NoteSigner:
    """The node's checkpoint key."""

    name: str
    key: ed25519.Ed25519PrivateKey = field(repr=False)

    @property
    def verifier(self) -> Verifier:
        public = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw)
        return Verifier(self.name, public)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, ed25519.Ed25519PrivateKey.generate())

    def save(self, path: Path) -> None:
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        write_private(path, pem)
        write_atomic(path.with_suffix(".pub"), (str(self.verifier) + "\n").encode())

    @classmethod
    def load(cls, path: Path, name: str) -> NoteSigner:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the checkpoint key ({exc})") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{path}: the checkpoint key must be Ed25519")
        return cls(name, key)

    def sign(self, body: str) -> str:
        signature = self.key.sign(body.encode("utf-8"))
        blob = base64.b64encode(self.verifier.key_hash + signature).decode()
        return f"{body}\n{DASH} {self.name} {blob}\n"


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint: origin, size, root and the note it came from."""

    origin: str
    size: int
    root: bytes
    note: str


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse(note: str) -> Checkpoint:
    """The checkpoint in a signed note, unverified; Unverifiable if it is malformed."""
    body, sep, _ = note.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 3:
        raise Unverifiable("not a checkpoint: expected origin, size and root, a blank line, signatures")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error):
        raise Unverifiable("not a checkpoint: bad size or root line") from None
    if size < 0 or len(root) != 32 or str(size) != lines[1]:
        raise Unverifiable("not a checkpoint: bad size or root line")
    return Checkpoint(lines[0], size, root, note)


def verify(note: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint if ``verifier`` signed it for its own origin; Unverifiable otherwise."""
    checkpoint = parse(note)
    body, _, signatures = note.partition("\n\n")
    if checkpoint.origin != verifier.name:
        raise Unverifiable(f"checkpoint origin {checkpoint.origin!r} is not the key's {verifier.name!r}")
    for line in signatures.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH or parts[1] != verifier.name:
            continue
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except binascii.Error:
            continue
        if blob[:4] == verifier.key_hash and verifier.verify((body + "\n").encode("utf-8"), blob[4:]):
            return checkpoint
    raise Unverifiable(f"checkpoint of size {checkpoint.size} has no valid signature by {verifier.name}")


def attest(verifier: Verifier, agency_key: ec.EllipticCurvePrivateKey) -> str:
    """The agency's signature over the checkpoint verifier key, base64 DER ECDSA-SHA256."""
    signature = agency_key.sign(ATTESTATION_CONTEXT + str(verifier).encode() + b"\n",
                                ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def check_attestation(verifier: Verifier, attestation: str, cert: x509.Certificate) -> bool:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(base64.b64decode(attestation), ATTESTATION_CONTEXT + str(verifier).encode() + b"\n",
                      ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def register_key(audit: AuditLog, verifier: Verifier, attestation: str, cert_pem: str) -> None:
    """Record a checkpoint key (new or rotated) and audit it, in the caller's transaction."""
    if rows.has_key(audit.conn, str(verifier)):
        return
    rows.add_key(audit.conn, rows.KeyRecord(str(verifier), attestation, cert_pem, audit.size), clock.now().isoformat())
    audit.append(Entry(Event.KEY_ROTATED, audit.node, detail={"verifier": str(verifier)}))


def rotate_key(audit: AuditLog, transaction: Callable[[], AbstractContextManager[object]], key_path: Path,
               agency_key: ec.EllipticCurvePrivateKey, cert_pem: str) -> Verifier:
    """A new checkpoint key for the log ``audit``: attested by the agency key, recorded in the log
    (``key-rotated``) in a ``transaction`` that commits before the key is written to ``key_path``. The verifier file
    (``.pub``) keeps the old keys' lines and adds the new one, so that the checkpoints the old keys
    signed still verify with it. A node signs with the new key once reloaded (SIGHUP)."""
    signer = NoteSigner.generate(origin_for(audit.node))
    with transaction():
        register_key(audit, signer.verifier, attest(signer.verifier, agency_key), cert_pem)
    public = key_path.with_suffix(".pub")
    try:
        previous = [line for line in public.read_text("utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        previous = []
    write_private(key_path, signer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    write_atomic(public, "".join(f"{line}\n" for line in [*previous, str(signer.verifier)]).encode())
    log.info("audit.key_rotated", verifier=str(signer.verifier))
    return signer.verifier


@dataclass
class Checkpointer:
    """Makes a checkpoint every ``every_entries`` entries or ``every_seconds``, and on demand.

    Runs after the caller's commits, on committed entries only; a signing failure is logged and
    the next checkpoint covers the entries (appending never waits for a checkpoint).
    """

    audit: AuditLog
    signer: NoteSigner
    every_entries: int = 1000
    every_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _last_time: float = field(default=0.0, init=False)

    def latest(self) -> Checkpoint | None:
        note = rows.latest_checkpoint_note(self.audit.conn)
        return parse(note) if note is not None else None

    def due(self) -> bool:
        latest = self.latest()
        grown = self.audit.size - (latest.size if latest else 0)
        return grown > 0 and (grown >= self.every_entries
                              or self.clock() - self._last_time >= self.every_seconds)

    def maybe(self) -> Checkpoint | None:
        return self.make() if self.due() else None

    def make(self) -> Checkpoint | None:
        """Sign the committed tree now, unless it has not grown. Never raises on signing trouble."""
        conn = self.audit.conn
        if conn.in_transaction:
            raise AuditError("commit before making a checkpoint: it must cover committed entries only")
        latest = self.latest()
        size = self.audit.size
        if size == 0 or (latest is not None and latest.size >= size):
            return latest
        root = self.audit.root(size)
        if latest is not None and self.audit.root(latest.size) != latest.root:
            log.error("audit.damaged", size=latest.size, reason="the tree no longer matches a checkpoint")
            raise LogDamaged(f"the tree no longer matches checkpoint {latest.size}: refusing to sign")
        try:
            note = self.signer.sign(checkpoint_body(self.signer.name, size, root))
        except (ValueError, TypeError, OSError) as exc:  # an HSM or key store that fails
            log.warning("audit.checkpoint_failed", size=size, error=str(exc))
            return None
        with conn:
            rows.add_checkpoint(conn, size, root, note, clock.now().isoformat())
        self._last_time = self.clock()
        return parse(note)
