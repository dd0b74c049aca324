"""``exchange envelope``: seal a dossier into a signed envelope (encrypted to the recipient on
request), verify one without a key, and open one with the recipient's key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lxml import etree

from exchange.commands import agency_arg, procedure_arg, read_input
from exchange.envelope import dossier
from exchange.envelope.encryption import Recipient, RecipientCertificate
from exchange.envelope.model import Header, Kind, VerifiedEnvelope
from exchange.envelope.sealing import Opener, Signer
from exchange.envelope.trust import TrustStore
from exchange.errors import InvalidDossier, InvalidEnvelope
from exchange.files import write_atomic

STEP_HELP = "the step of the procedure's route this transfer is for (e.g. police)"


def register(commands: Any) -> None:
    group = commands.add_parser("envelope", help="seal and verify signed envelopes")
    sub = group.add_subparsers(dest="envelope_command", metavar="ACTION", required=True)

    seal = sub.add_parser("seal", help="sign a dossier into a transfer envelope")
    seal.add_argument("--cert", type=Path, required=True, metavar="C")
    seal.add_argument("--key", type=Path, required=True, metavar="K")
    seal.add_argument("--to", type=agency_arg, required=True, metavar="CODE")
    seal.add_argument("--procedure", type=procedure_arg, required=True, metavar="CODE")
    seal.add_argument("--step", required=True, metavar="STEP", help=STEP_HELP)
    seal.add_argument("dossier", type=Path, metavar="DOSSIER")
    seal.add_argument("--out", type=Path, required=True, metavar="FILE")
    seal.add_argument("--encrypt-for", type=Path, metavar="RECIPIENT_CERT",
                      help="encrypt the dossier to this certificate (the --to agency's)")
    seal.set_defaults(handler=_seal)

    verify = sub.add_parser("verify", help="verify an envelope against the trusted CA")
    verify.add_argument("--trust", type=Path, required=True, metavar="CA",
                        help="the CA certificate (PEM file) or a CA directory")
    verify.add_argument("--crl", type=Path, metavar="CRL",
                        help="the CA's revocation list; without it, revocation is not checked")
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.set_defaults(handler=_verify)

    open_ = sub.add_parser("open", help="verify an envelope, then decrypt its payload with the recipient's key")
    open_.add_argument("--trust", type=Path, required=True, metavar="CA",
                       help="the CA certificate (PEM file) or a CA directory")
    open_.add_argument("--crl", type=Path, metavar="CRL",
                       help="the CA's revocation list; without it, revocation is not checked")
    open_.add_argument("--cert", type=Path, required=True, metavar="CERT", help="the recipient's certificate")
    open_.add_argument("--key", type=Path, required=True, metavar="KEY", help="the recipient's private key")
    open_.add_argument("file", type=Path, metavar="ENVELOPE")
    open_.add_argument("--out", type=Path, required=True, metavar="DOSSIER",
                       help="where to write the payload (mode 0600: it holds personal data)")
    open_.set_defaults(handler=_open)


def _seal(args: argparse.Namespace) -> int:
    signer = Signer.load(args.cert, args.key)
    root, info = dossier.load(read_input(args.dossier), str(args.dossier))
    if info.procedure != args.procedure:
        raise InvalidDossier(f"{args.dossier}: the dossier is for procedure {info.procedure}, "
                             f"not {args.procedure}")
    header = Header(kind=Kind.TRANSFER, sender=signer.agency, recipient=args.to,
                    dossier=info.code, procedure=args.procedure, step=args.step)
    recipient = RecipientCertificate.load(args.encrypt_for) if args.encrypt_for else None
    data = signer.seal(header, root, encrypt_for=recipient)
    write_atomic(args.out, data)
    encrypted = f", encrypted to certificate sha256 {recipient.fingerprint[:16]}…" if recipient else ""
    print(f"sealed {info.code} step {args.step}: {signer.agency} -> {args.to}, "
          f"message {header.message_id}, {len(data)} bytes{encrypted} -> {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    env = _opened(args, Opener(TrustStore.load(args.trust, args.crl), keyless=True))
    if env is None:
        return 1
    print(summary(env))
    _unchecked_revocation(args)
    return 0


def _open(args: argparse.Namespace) -> int:
    opener = Opener(TrustStore.load(args.trust, args.crl), recipient=Recipient.load(args.cert, args.key))
    env = _opened(args, opener)
    if env is None:
        return 1
    write_atomic(args.out, etree.tostring(env.payload, xml_declaration=True, encoding="UTF-8"), mode=0o600)
    print(summary(env))
    print(f"  wrote     {args.out}")
    _unchecked_revocation(args)
    return 0


def _opened(args: argparse.Namespace, opener: Opener) -> VerifiedEnvelope | None:
    """The envelope of ``args.file`` opened, or None once its refusal is printed with its reason code."""
    try:
        return opener.open(read_input(args.file), source=str(args.file))
    except InvalidEnvelope as exc:
        print(f"refused: {exc.reason_code}: {exc.message}", file=sys.stderr)
        _unchecked_revocation(args)
        return None


def _unchecked_revocation(args: argparse.Namespace) -> None:
    if args.crl is None:
        print("note: revocation was not checked (no --crl): a revoked signer's envelope verifies too",
              file=sys.stderr)


def summary(env: VerifiedEnvelope) -> str:
    h = env.header
    lines = [
        f"verified {h.kind} {h.message_id}",
        f"  from      {h.sender} (signed, certificate sha256 {env.signer_fingerprint[:16]}…)",
        f"  to        {h.recipient}",
    ]
    if h.dossier:
        lines.append(f"  dossier   {h.dossier} procedure {h.procedure} step {h.step}")
    lines += [
        f"  created   {h.created:%Y-%m-%d %H:%M:%S}Z, expires {h.expiry:%Y-%m-%d %H:%M:%S}Z",
        _payload_line(env),
        f"  envelope  sha256 {env.envelope_digest}",
    ]
    return "\n".join(lines)


def _payload_line(env: VerifiedEnvelope) -> str:
    if env.payload_encrypted:
        return (f"  payload   encrypted to {env.header.recipient} (certificate sha256 {env.encrypted_for}); "
                f"not readable without that key, which checks PayloadDigest sha256 {env.payload_digest}")
    if env.encrypted_for:
        return f"  payload   sha256 {env.payload_digest}, decrypted (certificate sha256 {env.encrypted_for[:16]}…)"
    return f"  payload   sha256 {env.payload_digest}"
