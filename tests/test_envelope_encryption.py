"""Payloads encrypted to the recipient agency (JWE ECDH-ES+A256KW / A256GCM), signed after encryption.

Each test pins one behaviour: the round trip, the outside judge (Debian's ``jose``), verification
without the key revealing nothing, and the refusals of a re-addressed, tampered or foreign payload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwe, jwk
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from exchange.codes import AgencyCode
from exchange.envelope import pki
from exchange.envelope.encryption import ALG, ENC, Recipient, RecipientCertificate
from exchange.envelope.model import Header, canonical, envelope_element
from exchange.envelope.sealing import Opener, Signer
from exchange.errors import ConfigError, DigestMismatch, NotForThisRecipient, Undecryptable
from exchange.xml.names import DOSSIER_NS, q
from tests.agencies import COMMUNE, INSURANCE, POLICE
from tests.conftest import Pki, make_dossier, require_tool, transfer_header
from tests.test_cli import run

ATTACKER = INSURANCE
"""A genuine agency of the province, with a valid certificate, that turns against the others."""


def recipient(pki_env: Pki, agency: AgencyCode) -> Recipient:
    pki_env.signer(agency)  # issues the identity on first use
    directory = pki_env.agency_dir(agency)
    return Recipient.load(directory / pki.AGENCY_CERT, directory / pki.AGENCY_KEY)


def to(pki_env: Pki, agency: AgencyCode) -> RecipientCertificate:
    return RecipientCertificate.of(recipient(pki_env, agency).cert)


def sign(signer: Signer, root: etree._Element) -> bytes:
    """Sign a hand-built envelope exactly as ``Signer.seal`` does (the attacker's own signature)."""
    signed = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA256, digest_algorithm=DigestAlgorithm.SHA256,
                       c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0).sign(
        root, key=signer.key, cert=[pki.cert_pem(signer.cert).decode()])
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def parts(data: bytes) -> tuple[etree._Element, str]:
    """The EncryptedPayload of a sealed envelope (detached) and its header's PayloadDigest."""
    root = etree.fromstring(data)
    digest = root.findtext(f"{q('Header')}/{q('PayloadDigest')}") or ""
    return root.find(f"{q('Body')}/{q('EncryptedPayload')}"), digest  # type: ignore[return-value]


def jwe_of(data: bytes) -> str:
    return parts(data)[0].findtext(q("JWE")) or ""


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rewrite_protected_header(payload: etree._Element, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change the JWE's protected header in place (the rest of the compact form kept)."""
    token = payload.find(q("JWE"))
    assert token is not None
    assert token.text
    first, rest = token.text.split(".", 1)
    header = json.loads(unb64u(first))
    edit(header)
    token.text = b64u(json.dumps(header).encode()) + "." + rest


@pytest.fixture(scope="module")
def encrypted(pki_env: Pki) -> tuple[etree._Element, bytes]:
    """A 10 KiB transfer from the commune, encrypted to the police, and its plaintext dossier."""
    dossier = make_dossier()
    return dossier, pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier,
                                                 encrypt_for=to(pki_env, POLICE))


@pytest.mark.parametrize("size_kb", [10, 100])
def test_round_trip(pki_env: Pki, size_kb: int) -> None:
    """The police open what the commune encrypted to them: the same dossier, PayloadDigest checked."""
    dossier = make_dossier(size_kb=size_kb)
    data = pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier, encrypt_for=to(pki_env, POLICE))
    env = pki_env.opener(recipient=recipient(pki_env, POLICE)).open(data)
    assert env.payload.tag == f"{{{DOSSIER_NS}}}Dossier"
    assert canonical(env.payload) == canonical(dossier)
    assert env.payload_digest == hashlib.sha256(canonical(dossier)).hexdigest()
    assert env.encrypted_for == to(pki_env, POLICE).fingerprint
    assert not env.payload_encrypted


def test_protected_header_names_recipient_and_sender(encrypted: tuple[etree._Element, bytes],
                                                     pki_env: Pki) -> None:
    """kid is the recipient certificate's SHA-256, apu/apv the sender's and recipient's codes."""
    header = json.loads(unb64u(jwe_of(encrypted[1]).split(".")[0]))
    assert (header["alg"], header["enc"]) == (ALG, ENC)
    assert header["kid"] == to(pki_env, POLICE).fingerprint
    assert unb64u(header["apu"]).decode() == str(COMMUNE)
    assert unb64u(header["apv"]).decode() == str(POLICE)


@pytest.mark.tools
def test_jose_decrypts_with_the_recipient_key_only(encrypted: tuple[etree._Element, bytes], pki_env: Pki,
                                                   tmp_path: Path) -> None:
    """Debian's jose decrypts the JWE with the police key to the canonical dossier; not with another's."""
    jose = require_tool("jose")
    dossier, data = encrypted
    (tmp_path / "payload.jwe").write_text(jwe_of(data))
    for agency in (POLICE, ATTACKER):
        (tmp_path / f"{agency}.jwk").write_text(jwk.JWK.from_pyca(recipient(pki_env, agency).key).export_private())
    ok = subprocess.run([jose, "jwe", "dec", "-i", str(tmp_path / "payload.jwe"),
                         "-k", str(tmp_path / f"{POLICE}.jwk")], capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == canonical(dossier)
    assert hashlib.sha256(ok.stdout).hexdigest() == parts(data)[1]
    wrong = subprocess.run([jose, "jwe", "dec", "-i", str(tmp_path / "payload.jwe"),
                            "-k", str(tmp_path / f"{ATTACKER}.jwk")], capture_output=True, check=False)
    assert wrong.returncode != 0
    assert b"Dossier" not in wrong.stdout


def test_verify_without_key_reveals_no_plaintext(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """Signature, header and routing verify without the key; the citizen's name and ID are not in the bytes."""
    dossier, data = encrypted
    name = (dossier.findtext(f".//{{{DOSSIER_NS}}}FullName") or "").encode()
    id_number = (dossier.findtext(f".//{{{DOSSIER_NS}}}IdNumber") or "").encode()
    assert name
    assert id_number
    clear = pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier)
    assert name in clear
    assert id_number in clear
    assert name not in data
    assert id_number not in data
    env = pki_env.opener(keyless=True).open(data)
    assert env.payload_encrypted
    assert env.payload.tag == q("EncryptedPayload")
    assert env.header.recipient == POLICE
    assert env.signer == COMMUNE
    assert env.encrypted_for == to(pki_env, POLICE).fingerprint


def test_node_without_key_refuses_encrypted(encrypted: tuple[etree._Element, bytes], opener: Opener) -> None:
    """An opener with no key (and not asked for keyless verification) never hands out the ciphertext."""
    with pytest.raises(Undecryptable, match="no key"):
        opener.open(encrypted[1])


def test_another_agency_key_is_refused(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """The attacker's own key does not open what was encrypted to the police."""
    with pytest.raises(NotForThisRecipient):
        pki_env.opener(recipient=recipient(pki_env, ATTACKER)).open(encrypted[1])


def test_readdressed_by_attacker_is_refused(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """The police's payload, re-sent by the attacker in an envelope it signs (From changed), is refused."""
    dossier, data = encrypted
    payload, digest = parts(data)
    root = envelope_element(transfer_header(dossier, sender=ATTACKER), payload, digest)
    forged = sign(pki_env.signer(ATTACKER), root)
    with pytest.raises(NotForThisRecipient, match="encrypted by"):
        pki_env.opener(keyless=True).open(forged)
    with pytest.raises(NotForThisRecipient):
        pki_env.opener(recipient=recipient(pki_env, POLICE)).open(forged)


def test_moved_to_envelope_for_another_recipient_is_refused(encrypted: tuple[etree._Element, bytes],
                                                           pki_env: Pki) -> None:
    """The same EncryptedPayload in an envelope addressed to the attacker is refused, key or no key."""
    dossier, data = encrypted
    payload, digest = parts(data)
    header: Header = transfer_header(dossier, recipient=ATTACKER)
    # Signed with the genuine sender's key: only the addressing differs.
    forged = sign(pki_env.signer(COMMUNE), envelope_element(header, payload, digest))
    with pytest.raises(NotForThisRecipient, match="encrypted for"):
        pki_env.opener(keyless=True).open(forged)
    with pytest.raises(NotForThisRecipient):
        pki_env.opener(recipient=recipient(pki_env, ATTACKER)).open(forged)


def test_rewritten_protected_header_does_not_decrypt(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """Rewriting apu to the attacker (and re-signing) passes the addressing checks but not decryption:
    the protected header is the AEAD's additional data and apu enters the key derivation."""
    dossier, data = encrypted
    payload, digest = parts(data)
    rewrite_protected_header(payload, lambda header: header.update(apu=b64u(str(ATTACKER).encode())))
    forged = sign(pki_env.signer(ATTACKER), envelope_element(transfer_header(dossier, sender=ATTACKER),
                                                             payload, digest))
    pki_env.opener(keyless=True).open(forged)  # the addressing agrees: only the key can tell
    with pytest.raises(Undecryptable):
        pki_env.opener(recipient=recipient(pki_env, POLICE)).open(forged)


def test_tampered_ciphertext_is_refused(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """One ciphertext character changed, the envelope re-signed by its sender: undecryptable."""
    dossier, data = encrypted
    payload, digest = parts(data)
    token = payload.find(q("JWE"))
    assert token is not None
    assert token.text
    pieces = token.text.split(".")
    pieces[3] = ("B" if pieces[3][10] == "A" else "A").join((pieces[3][:10], pieces[3][11:]))
    token.text = ".".join(pieces)
    forged = sign(pki_env.signer(COMMUNE), envelope_element(transfer_header(dossier), payload, digest))
    with pytest.raises(Undecryptable):
        pki_env.opener(recipient=recipient(pki_env, POLICE)).open(forged)


def test_jwcrypto_decrypts_what_we_encrypt(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """A general JOSE library (the second judge) decrypts our compact JWE with the police key."""
    dossier, data = encrypted
    token = jwe.JWE()
    token.deserialize(jwe_of(data), key=jwk.JWK.from_pyca(recipient(pki_env, POLICE).key))
    assert token.plaintext == canonical(dossier)


def test_we_decrypt_what_jwcrypto_encrypts(pki_env: Pki) -> None:
    """A JWE made by jwcrypto with our protected header, signed into an envelope, opens to the dossier."""
    dossier = make_dossier()
    police = to(pki_env, POLICE)
    token = jwe.JWE(canonical(dossier), protected=json.dumps(
        {"alg": ALG, "enc": ENC, "kid": police.fingerprint, "apu": b64u(str(COMMUNE).encode()), "apv": b64u(str(POLICE).encode())}))
    token.add_recipient(jwk.JWK.from_pyca(police.cert.public_key()))
    payload, digest = parts(pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier, encrypt_for=police))
    text = payload.find(q("JWE"))
    assert text is not None
    text.text = token.serialize(compact=True)
    data = sign(pki_env.signer(COMMUNE), envelope_element(transfer_header(dossier), payload, digest))
    env = pki_env.opener(recipient=recipient(pki_env, POLICE)).open(data)
    assert canonical(env.payload) == canonical(dossier)


def test_ephemeral_key_off_the_curve_is_refused(encrypted: tuple[etree._Element, bytes], pki_env: Pki) -> None:
    """An epk that is not a P-256 point (the invalid-curve attack on ECDH) is refused, not used."""
    dossier, data = encrypted
    payload, digest = parts(data)
    rewrite_protected_header(payload, lambda header: header["epk"].update(y=b64u((1).to_bytes(32, "big"))))
    forged = sign(pki_env.signer(COMMUNE), envelope_element(transfer_header(dossier), payload, digest))
    with pytest.raises(Undecryptable, match="ValueError"):
        pki_env.opener(recipient=recipient(pki_env, POLICE)).open(forged)


def test_payload_digest_binds_the_plaintext(pki_env: Pki) -> None:
    """A ciphertext of another dossier under the first one's PayloadDigest is refused after decryption."""
    first, second = make_dossier(sequence=1), make_dossier(sequence=2)
    payload = to(pki_env, POLICE).encrypt(transfer_header(first).kind, COMMUNE, canonical(second))
    root = envelope_element(transfer_header(first), payload, hashlib.sha256(canonical(first)).hexdigest())
    data = sign(pki_env.signer(COMMUNE), root)
    pki_env.opener(keyless=True).open(data)
    with pytest.raises(DigestMismatch, match="decrypted payload"):
        pki_env.opener(recipient=recipient(pki_env, POLICE)).open(data)


def test_seal_refuses_certificate_of_another_agency(pki_env: Pki) -> None:
    """Encrypting to a certificate that is not the header recipient's is a mistake caught at sealing."""
    dossier = make_dossier()
    with pytest.raises(ConfigError, match="addressed to"):
        pki_env.signer(COMMUNE).seal(transfer_header(dossier), dossier, encrypt_for=to(pki_env, ATTACKER))


# The command line: seal --encrypt-for, verify without a key, open with the key.

@pytest.fixture
def world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A CA, the commune, the police and the attacker, a sample dossier, sealed encrypted to the police."""
    assert run(capsys, "pki", "init-ca", "--out", str(tmp_path / "ca"))[0] == 0
    for name, code in (("commune", COMMUNE), ("police", POLICE), ("attacker", ATTACKER)):
        assert run(capsys, "pki", "issue", "--ca", str(tmp_path / "ca"), "--agency", str(code),
                   "--out", str(tmp_path / name))[0] == 0
    assert run(capsys, "dossier", "sample", "--agency", str(COMMUNE), "--procedure", "2.000986",
               "--out", str(tmp_path / "dossier.xml"))[0] == 0
    code, out, _ = run(capsys, "envelope", "seal", "--cert", str(tmp_path / "commune/cert.pem"),
                       "--key", str(tmp_path / "commune/key.pem"), "--to", str(POLICE),
                       "--procedure", "2.000986", "--step", "police", str(tmp_path / "dossier.xml"),
                       "--out", str(tmp_path / "envelope.xml"), "--encrypt-for", str(tmp_path / "police/cert.pem"))
    assert code == 0
    assert "encrypted to certificate" in out
    return tmp_path


def test_cli_verify_says_encrypted(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify needs no key, exits 0 and says the payload is encrypted to the police."""
    code, out, _ = run(capsys, "envelope", "verify", "--trust", str(world / "ca/ca.pem"), str(world / "envelope.xml"))
    assert code == 0
    assert f"payload   encrypted to {POLICE}" in out


def test_cli_open_with_the_recipient_key(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """open verifies, decrypts and writes the dossier (0600), identical in canonical form."""
    out_path = world / "opened.xml"
    code, out, _ = run(capsys, "envelope", "open", "--trust", str(world / "ca/ca.pem"),
                       "--cert", str(world / "police/cert.pem"), "--key", str(world / "police/key.pem"),
                       str(world / "envelope.xml"), "--out", str(out_path))
    assert code == 0, out
    assert "decrypted" in out
    assert out_path.stat().st_mode & 0o777 == 0o600
    assert canonical(etree.fromstring(out_path.read_bytes())) == canonical(
        etree.fromstring((world / "dossier.xml").read_bytes()))


def test_cli_open_with_another_agency_key(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """open with the attacker's certificate and key exits 1 with not-for-this-recipient, writes nothing."""
    out_path = world / "opened.xml"
    code, _, err = run(capsys, "envelope", "open", "--trust", str(world / "ca/ca.pem"),
                       "--cert", str(world / "attacker/cert.pem"), "--key", str(world / "attacker/key.pem"),
                       str(world / "envelope.xml"), "--out", str(out_path))
    assert code == 1
    assert "refused: not-for-this-recipient:" in err
    assert not out_path.exists()


def test_cli_open_with_a_key_that_is_not_the_certificate(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The police's certificate with the attacker's key is refused before any decryption (exit 1)."""
    code, _, err = run(capsys, "envelope", "open", "--trust", str(world / "ca/ca.pem"),
                       "--cert", str(world / "police/cert.pem"), "--key", str(world / "attacker/key.pem"),
                       str(world / "envelope.xml"), "--out", str(world / "opened.xml"))
    assert code == 1
    assert "is not the key of" in err
    assert not (world / "opened.xml").exists()
