"""Seal and open throughput against the raw primitive, measured in the same run.

    python benchmarks/envelope.py [--rounds 7] [--seconds 0.5]

For each dossier size: seal/s and open/s (median of rounds), and the baseline the issue names:
raw ECDSA P-256 sign and verify of the same SHA-256 digest plus exclusive c14n of the same
envelope bytes. The ratio open / (verify + c14n) is the figure to watch (aim: at most 5).
Then seal+open with the payload encrypted to the recipient (JWE ECDH-ES+A256KW, A256GCM) against
seal+open in the clear, in the same run: encryption may add at most 20 %.

Then the hostile inputs known to cost the most (median of rounds, one call each): each must be
refused (or opened) in time linear in its size, and in at most 1 s below 1 MiB.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from lxml import etree

from exchange.codes import AgencyCode, DossierCode, ProcedureCode
from exchange.demo import samples
from exchange.envelope import dossier as dossiers
from exchange.envelope import pki
from exchange.envelope.encryption import Recipient, RecipientCertificate
from exchange.envelope.model import Header, Kind
from exchange.envelope.sealing import Opener, Signer
from exchange.envelope.trust import TrustStore
from exchange.errors import InvalidDossier, InvalidEnvelope

COMMUNE = AgencyCode("000.01.10.H49")
POLICE = AgencyCode("000.30.10.H49")
BIRTH = ProcedureCode("2.000986")


def per_call(fn: Callable[[], object], seconds: float, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of about ``seconds`` each."""
    fn()
    results = []
    for _ in range(rounds):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            fn()
            count += 1
        results.append(elapsed / count)
    return statistics.median(results)


def interleaved(first: Callable[[], object], second: Callable[[], object], seconds: float,
                rounds: int) -> tuple[float, float]:
    """Median seconds per call of each, their rounds alternating so that a busy spell of the
    machine weighs on both alike (the ratio is the figure, not the absolute times)."""
    a, b = [], []
    for _ in range(rounds):
        a.append(per_call(first, seconds / 2, 1))
        b.append(per_call(second, seconds / 2, 1))
    return statistics.median(a), statistics.median(b)


def bench_size(size_kb: int, signer: Signer, opener: Opener, seconds: float, rounds: int,
               recipient: Recipient, to: RecipientCertificate) -> None:
    dossier = samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=size_kb))
    header = Header(kind=Kind.TRANSFER, sender=COMMUNE, recipient=POLICE, procedure=BIRTH,
                    dossier=DossierCode(dossier.findtext("{urn:vn-exchange:dossier:1}Code") or ""),
                    step="police")
    data = signer.seal(header, dossier)
    opener.open(data)
    tree = etree.fromstring(data)
    digest = hashlib.sha256(data).digest()
    key = signer.key
    signature = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    public = key.public_key()
    algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

    seal = per_call(lambda: signer.seal(header, dossier), seconds, rounds)
    open_ = per_call(lambda: opener.open(data), seconds, rounds)
    raw_sign = per_call(lambda: key.sign(digest, algorithm), seconds, rounds)
    raw_verify = per_call(lambda: public.verify(signature, digest, algorithm), seconds, rounds)
    c14n = per_call(lambda: etree.tostring(tree, method="c14n", exclusive=True), seconds, rounds)

    print(f"\n{size_kb} KiB dossier, envelope {len(data):,} bytes")
    print(f"  seal   {1 / seal:9,.0f}/s  {seal * 1e6:8.0f} us")
    print(f"  open   {1 / open_:9,.0f}/s  {open_ * 1e6:8.0f} us")
    print(f"  raw ECDSA sign {raw_sign * 1e6:6.0f} us, verify {raw_verify * 1e6:6.0f} us, "
          f"exc-c14n {c14n * 1e6:6.0f} us")
    print(f"  ratio seal / (sign + c14n)   {seal / (raw_sign + c14n):5.1f}x")
    print(f"  ratio open / (verify + c14n) {open_ / (raw_verify + c14n):5.1f}x  (aim <= 5x)")

    decrypting = dataclasses.replace(opener, recipient=recipient)
    encrypted = signer.seal(header, dossier, encrypt_for=to)
    decrypting.open(encrypted)
    clear, sealed = interleaved(lambda: opener.open(signer.seal(header, dossier)),
                                lambda: decrypting.open(signer.seal(header, dossier, encrypt_for=to)),
                                seconds, rounds)
    print(f"  seal+open in the clear  {clear * 1e6:8.0f} us")
    print(f"  seal+open encrypted     {sealed * 1e6:8.0f} us  envelope {len(encrypted):,} bytes")
    print(f"  ratio encrypted / clear {sealed / clear:5.2f}x  (aim <= 1.20x)")


def _attrs(n: int) -> bytes:
    return b" ".join(b'a%d="x"' % i for i in range(n))


def hostile_cases(data: bytes) -> dict[str, bytes]:
    """The worst inputs known, built from the genuine envelope ``data``."""
    root = b'<Envelope xmlns="urn:vn-exchange:envelope:1" version="1" '
    ack = (b"<Ack><MessageId>zz</MessageId><EnvelopeDigest>q</EnvelopeDigest><Outcome>maybe</Outcome>"
           b"<ReceivedAt>no</ReceivedAt><Extra/></Ack>")
    receipt = b'<Body><Receipt xmlns="urn:vn-exchange:receipt:1" version="1">' + ack * 1000 + b"</Receipt></Body>"
    start, end = data.index(b"<Body>"), data.index(b"</Body>") + len(b"</Body>")
    return {
        "2,000 made-up attributes, unsigned": root + _attrs(2000) + b"/>",
        "200,000 elements in a ds:Object": data.replace(
            b"</ds:Signature>", b"<ds:Object>" + b"<a/>" * 200_000 + b"</ds:Object></ds:Signature>"),
        "200,000 comments in the signature": data.replace(
            b"</ds:Signature>", b"<!---->" * 200_000 + b"</ds:Signature>"),
        "16,000 elements in the body": data.replace(b"</Body>", b"<x/>" * 16_000 + b"</Body>"),
        "16 x 1,000 comments in added hops": data.replace(b"<Trace/>", b"<Trace>" + (
            b'<Hop agency="000.01.10.H49" at="2025-01-01T00:00:00Z">' + b"<!---->" * 1000 + b"</Hop>") * 16
            + b"</Trace>"),
        "a receipt of 1,000 invalid acks": data[:start] + receipt + data[end:],
        "20,000 namespace declarations": root + b" ".join(
            b'xmlns:p%d="urn:x:%d"' % (i, i) for i in range(20_000)) + b"/>",
        "1,000 comments in each signature element": _comments_in_signature(data, 1000),
    }


def _comments_in_signature(data: bytes, each: int) -> bytes:
    root = etree.fromstring(data)
    for el in root[-1].iter():
        if isinstance(el.tag, str) and len(el):
            el.extend(etree.Comment("") for _ in range(each))
    return bytes(etree.tostring(root))


def bench_hostile(data: bytes, dossier: etree._Element, opener: Opener, rounds: int) -> None:
    print("\nhostile inputs (median of rounds; every one must stay linear, under 1 s below 1 MiB)")
    dossier_bytes = etree.tostring(dossier)
    cases: list[tuple[str, bytes, Callable[[bytes], object]]] = [
        (name, body, opener.open) for name, body in hostile_cases(data).items()]
    cases += [
        ("dossier: 2,000 made-up attributes",
         dossier_bytes.replace(b"<Dossier ", b"<Dossier " + _attrs(2000) + b" ", 1), dossiers.load),
        ("dossier: 1,000 invalid rows", dossier_bytes.replace(b"</ProcessingControl>", (
            b"<Row><Time>x</Time><Bad/></Row>" * 1000) + b"</ProcessingControl>"), dossiers.load),
    ]
    for name, body, check in cases:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            try:
                check(body)
                verdict = "accepted"
            except (InvalidEnvelope, InvalidDossier) as exc:
                verdict = getattr(exc, "reason_code", "invalid-dossier")
            times.append(time.perf_counter() - start)
        print(f"  {name:42} {len(body):>9,} bytes {statistics.median(times) * 1e3:8.1f} ms  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca = pki.init_ca(root / "ca", "Bench CA")
        pki.issue_agency(ca, COMMUNE, root / "commune")
        pki.issue_agency(ca, POLICE, root / "police")
        signer = Signer.load(root / "commune/cert.pem", root / "commune/key.pem")
        recipient = Recipient.load(root / "police/cert.pem", root / "police/key.pem")
        to = RecipientCertificate.of(recipient.cert)
        opener = Opener(TrustStore.load(root / "ca"))
        print(f"medians of {args.rounds} rounds of {args.seconds}s each")
        for size in args.sizes:
            bench_size(size, signer, opener, args.seconds, args.rounds, recipient, to)
        dossier = samples.sample_dossier(samples.SampleSpec(COMMUNE, BIRTH, size_kb=10))
        header = Header(kind=Kind.TRANSFER, sender=COMMUNE, recipient=POLICE, procedure=BIRTH,
                        dossier=DossierCode(dossier.findtext("{urn:vn-exchange:dossier:1}Code") or ""),
                        step="police")
        bench_hostile(signer.seal(header, copy.deepcopy(dossier)), dossier, opener, args.rounds)


if __name__ == "__main__":
    main()
