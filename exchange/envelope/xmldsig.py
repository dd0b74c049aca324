"""XML-DSig for our one envelope shape, signed and verified without a general XML-DSig engine.

The profile: one enveloped signature, the root's last child; one ``Reference URI=""`` with exactly
the enveloped-signature and exclusive-c14n transforms; exclusive c14n of SignedInfo; ECDSA P-256
with SHA-256 (``SignatureValue`` is r || s, 64 bytes, as XML-DSig 1.1 says); SHA-256 digest; the
signer's certificate in ``KeyInfo/X509Data``. Anything else is refused before any cryptography.

Why not signxml on the hot path: for our one shape it spent about three quarters of ``open`` and
``seal`` outside the cryptography and the canonicalization (re-parsing, copying, resolving what
our profile already pins). Here the canonical bytes are lxml's (libxml2's exclusive c14n, as
signxml's are), the digest is hashlib's and the ECDSA is ``cryptography``'s. Differential tests
hold it equal to signxml and to xmlsec1 on every genuine and hostile envelope of the corpus
(tests/test_xmldsig.py).

What is read after verification is what was signed: the tree that was canonicalized, except that
exclusive c14n without comments leaves comments and processing instructions out while lxml's
``.text`` stops at them; a document holding any is re-parsed from its canonical bytes instead
(the classic comment-injection attack on SAML could not truncate a value here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from lxml import etree

from exchange.errors import BadSignature
from exchange.xml.names import DS_NS

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_COORDINATE = 32
_ECDSA = ec.ECDSA(hashes.SHA256())


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


SIGNATURE = _ds("Signature")
_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO = _ds("SignedInfo"), _ds("SignatureValue"), _ds("KeyInfo")
_C14N_METHOD, _SIGNATURE_METHOD, _REFERENCE = _ds("CanonicalizationMethod"), _ds("SignatureMethod"), _ds("Reference")
_TRANSFORMS, _TRANSFORM = _ds("Transforms"), _ds("Transform")
_DIGEST_METHOD, _DIGEST_VALUE = _ds("DigestMethod"), _ds("DigestValue")
_CERTIFICATE_PATH = f"{_KEY_INFO}/{_ds('X509Data')}/{_ds('X509Certificate')}"


def c14n(el: etree._Element) -> bytes:
    """Exclusive XML canonicalization 1.0 without comments."""
    return bytes(etree.tostring(el, method="c14n", exclusive=True, with_comments=False))


def sign(root: etree._Element, key: ec.EllipticCurvePrivateKey, certificate_b64: str) -> etree._Element:
    """Append the enveloped signature over ``root`` (which has none yet) and return ``root``."""
    digest = base64.b64encode(hashlib.sha256(c14n(root)).digest()).decode("ascii")
    signature = etree.SubElement(root, SIGNATURE, nsmap={"ds": DS_NS})
    info = etree.SubElement(signature, _SIGNED_INFO)
    etree.SubElement(info, _C14N_METHOD, Algorithm=EXC_C14N)
    etree.SubElement(info, _SIGNATURE_METHOD, Algorithm=ECDSA_SHA256)
    reference = etree.SubElement(info, _REFERENCE, URI="")
    transforms = etree.SubElement(reference, _TRANSFORMS)
    etree.SubElement(transforms, _TRANSFORM, Algorithm=ENVELOPED)
    etree.SubElement(transforms, _TRANSFORM, Algorithm=EXC_C14N)
    etree.SubElement(reference, _DIGEST_METHOD, Algorithm=SHA256)
    etree.SubElement(reference, _DIGEST_VALUE).text = digest
    r, s = decode_dss_signature(key.sign(c14n(info), _ECDSA))
    value = r.to_bytes(_COORDINATE, "big") + s.to_bytes(_COORDINATE, "big")
    etree.SubElement(signature, _SIGNATURE_VALUE).text = base64.b64encode(value).decode("ascii")
    data = etree.SubElement(etree.SubElement(signature, _KEY_INFO), _ds("X509Data"))
    etree.SubElement(data, _ds("X509Certificate")).text = certificate_b64
    return root


@dataclass(frozen=True)
class Signed:
    """What a verified signature covers: the canonical bytes digested, and the tree to read them from."""

    data: bytes
    root: etree._Element
    """The envelope's root without its signature (as the enveloped transform sees it)."""


@dataclass(frozen=True)
class Pinned:
    """A signature whose every algorithm and reference is our profile's, not yet verified."""

    signature: etree._Element
    info: etree._Element
    digest: bytes
    certificate: str
    """The base64 text of the one certificate in KeyInfo (the trust store's cache key)."""


def pinned(root: etree._Element) -> Pinned:
    """The enveloped signature of ``root`` if it is exactly the profile's; ``BadSignature`` if not.
    No cryptography yet: this is the cheap refusal before the trust store and ECDSA."""
    signature = _signature(root)
    info = signature[0] if len(signature) else None
    if info is None or info.tag != _SIGNED_INFO:
        raise BadSignature("the signature has no SignedInfo first")
    digest = _pinned(info)
    certs = signature.findall(_CERTIFICATE_PATH)
    if len(certs) != 1 or len(signature.findall(_KEY_INFO)) != 1:
        raise BadSignature(f"expected exactly one X509Certificate in KeyInfo, found {len(certs)}")
    return Pinned(signature, info, digest, certs[0].text or "")


def verify(root: etree._Element, signature: Pinned, key: ec.EllipticCurvePublicKey) -> Signed:
    """Verify ``signature`` (``pinned(root)``) with ``key``; the signature is taken off ``root``."""
    _check_methods(signature.info)
    _check_value(signature.signature, c14n(signature.info), key)
    _enveloped(root, signature.signature)
    data = c14n(root)
    if hashlib.sha256(data).digest() != signature.digest:
        raise BadSignature("Digest mismatch for reference 0: the signed content was changed")
    if next(root.iter(etree.Comment, etree.ProcessingInstruction), None) is not None:
        root = etree.fromstring(data, parser=_CANONICAL)
    return Signed(data, root)


def _enveloped(root: etree._Element, signature: etree._Element) -> None:
    """The enveloped-signature transform: the Signature element out, the text after it kept
    (lxml would take an element's tail text away with it)."""
    tail = signature.tail
    root.remove(signature)
    if tail:
        if len(root):
            root[-1].tail = (root[-1].tail or "") + tail
        else:
            root.text = (root.text or "") + tail


def _signature(root: etree._Element) -> etree._Element:
    signature = root[-1] if len(root) else None
    if signature is None or signature.tag != SIGNATURE:
        raise BadSignature("the envelope's last element is not its ds:Signature")
    return signature


def _pinned(info: etree._Element) -> bytes:
    """The reference's digest, once SignedInfo is exactly our profile's; anything else refused."""
    kids = list(info)
    if [k.tag for k in kids] != [_C14N_METHOD, _SIGNATURE_METHOD, _REFERENCE]:
        raise BadSignature("expected exactly one signed reference, after CanonicalizationMethod and SignatureMethod")
    reference = kids[2]
    if reference.get("URI") != "":
        raise BadSignature(f"the reference must be URI=\"\", found URI={reference.get('URI')!r}")
    parts = list(reference)
    if [p.tag for p in parts] != [_TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE]:
        raise BadSignature("the reference must hold Transforms, DigestMethod and DigestValue")
    transforms, digest_method, digest_value = parts
    found = [(t.tag, t.get("Algorithm"), len(t)) for t in transforms]
    if found != [(_TRANSFORM, ENVELOPED, 0), (_TRANSFORM, EXC_C14N, 0)]:
        raise BadSignature(f"unexpected transforms {[f[1] for f in found]}: expected enveloped, exclusive c14n")
    if digest_method.get("Algorithm") != SHA256:
        raise BadSignature(f"digest method {digest_method.get('Algorithm')!r}: expected SHA-256")
    try:
        value = base64.b64decode(digest_value.text or "", validate=True)
    except binascii.Error:
        raise BadSignature("the reference's DigestValue is not base64") from None
    if len(value) != hashlib.sha256().digest_size:
        raise BadSignature("the reference's DigestValue is not a SHA-256 digest")
    return value


def _check_methods(info: etree._Element) -> None:
    """After the trust store (whose refusal of a signer says more): the algorithms SignedInfo names."""
    method, algorithm = info[0], info[1]
    if method.get("Algorithm") != EXC_C14N or len(method):
        raise BadSignature(f"SignedInfo canonicalization {method.get('Algorithm')!r}: expected exclusive c14n")
    if algorithm.get("Algorithm") != ECDSA_SHA256 or len(algorithm):
        raise BadSignature(f"signature method {algorithm.get('Algorithm')!r}: expected ECDSA with SHA-256")


def _check_value(signature: etree._Element, signed_info: bytes, key: ec.EllipticCurvePublicKey) -> None:
    value = signature.find(_SIGNATURE_VALUE)
    try:
        raw = base64.b64decode("".join((value.text or "").split()) if value is not None else "", validate=True)
    except binascii.Error:
        raise BadSignature("the SignatureValue is not base64") from None
    if len(raw) != 2 * _COORDINATE:
        raise BadSignature(f"the SignatureValue is {len(raw)} bytes, expected r || s of 64")
    der = encode_dss_signature(int.from_bytes(raw[:_COORDINATE], "big"), int.from_bytes(raw[_COORDINATE:], "big"))
    try:
        key.verify(der, signed_info, _ECDSA)
    except InvalidSignature:
        raise BadSignature("Signature verification failed: the SignatureValue does not match SignedInfo") from None


_CANONICAL = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True, remove_pis=True, collect_ids=False)
"""For canonical bytes only (no DOCTYPE, no entities: c14n output has none)."""
