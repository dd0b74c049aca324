"""``exchange pki``: the provincial CA, agency certificates, revocation and CRLs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exchange.commands import agency_arg, positive_int
from exchange.envelope import pki
from exchange.errors import PkiError
from exchange.files import write_atomic


def register(commands: Any) -> None:
    group = commands.add_parser("pki", help="the provincial CA and agency certificates")
    sub = group.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    init = sub.add_parser("init-ca", help="create a CA: DIR/ca.pem and DIR/ca-key.pem (0600)")
    init.add_argument("--out", type=Path, required=True, metavar="DIR")
    init.add_argument("--name", default="Quang Ninh Province Exchange CA")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=_init_ca)

    request = sub.add_parser("request", help="at the agency: a key and a certificate request for the CA: "
                             "DIR/key.pem (0600), DIR/request.csr")
    request.add_argument("--agency", type=agency_arg, required=True, metavar="CODE")
    request.add_argument("--out", type=Path, required=True, metavar="DIR")
    request.add_argument("--name", help="the agency's name, for the certificate subject")
    request.add_argument("--force", action="store_true", help="replace an existing key")
    request.set_defaults(handler=_request)

    issue = sub.add_parser("issue", help="issue an agency certificate: for a new key (--agency: DIR2/cert.pem, "
                           "DIR2/key.pem) or for a request (--csr: DIR2/cert.pem only)")
    issue.add_argument("--ca", type=Path, required=True, metavar="DIR")
    whom = issue.add_mutually_exclusive_group(required=True)
    whom.add_argument("--agency", type=agency_arg, metavar="CODE")
    whom.add_argument("--csr", type=Path, metavar="FILE", help="a request from `exchange pki request`; "
                      "the agency's key stays with the agency")
    issue.add_argument("--out", type=Path, required=True, metavar="DIR2")
    issue.add_argument("--name", help="the agency's name, for the certificate subject (with --agency)")
    issue.add_argument("--days", type=positive_int, default=pki.AGENCY_DAYS)
    issue.add_argument("--force", action="store_true", help="replace an existing key")
    issue.set_defaults(handler=_issue)

    revoke = sub.add_parser("revoke", help="revoke a certificate issued by the CA")
    revoke.add_argument("--ca", type=Path, required=True, metavar="DIR")
    revoke.add_argument("--reason", default="unspecified")
    revoke.add_argument("cert", type=Path, metavar="CERT")
    revoke.set_defaults(handler=_revoke)

    crl = sub.add_parser("crl", help="write the CA's current revocation list")
    crl.add_argument("--ca", type=Path, required=True, metavar="DIR")
    crl.add_argument("--out", type=Path, required=True, metavar="FILE")
    crl.add_argument("--days", type=positive_int, default=pki.CRL_DAYS, help="validity")
    crl.set_defaults(handler=_crl)


def _init_ca(args: argparse.Namespace) -> int:
    ca = pki.init_ca(args.out, args.name, force=args.force)
    print(f"CA {args.name!r} in {args.out}: {pki.CA_CERT}, {pki.CA_KEY} (0600); "
          f"valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    return 0


def _request(args: argparse.Namespace) -> int:
    pki.request_agency(args.agency, args.out, name=args.name, force=args.force)
    print(f"key and request for {args.agency} in {args.out}: {pki.AGENCY_KEY} (0600, keep it here), "
          f"{pki.AGENCY_CSR} (send it to the CA: exchange pki issue --csr)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    if args.csr is not None:
        if args.name:
            raise PkiError("--name goes with --agency: a request carries the agency's name itself")
        cert = pki.issue_from_request(ca, args.csr, args.out, days=args.days)
        print(f"issued {pki.agency_of(cert)} serial {cert.serial_number:x} for the request {args.csr} into "
              f"{args.out}: {pki.AGENCY_CERT}; valid until {cert.not_valid_after_utc:%Y-%m-%d}")
        return 0
    cert = pki.issue_agency(ca, args.agency, args.out, name=args.name, days=args.days,
                            force=args.force)
    print(f"issued {args.agency} serial {cert.serial_number:x} into {args.out}: "
          f"{pki.AGENCY_CERT}, {pki.AGENCY_KEY} (0600); valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    cert = pki.load_cert(args.cert)
    fresh = ca.revoke(cert, args.reason)
    state = "revoked" if fresh else "already revoked"
    print(f"{state}: serial {cert.serial_number:x} {cert.subject.rfc4514_string()}; "
          "publish a new CRL with `exchange pki crl`")
    return 0


def _crl(args: argparse.Namespace) -> int:
    ca = pki.CertificateAuthority.load(args.ca)
    crl = ca.crl(days=args.days)
    from cryptography.hazmat.primitives.serialization import Encoding

    write_atomic(args.out, crl.public_bytes(Encoding.PEM))
    print(f"CRL with {len(crl)} revoked certificate(s) written to {args.out}, "
          f"next update {crl.next_update_utc:%Y-%m-%d %H:%M}Z")
    return 0
