"""The XML namespaces of our documents, and Clark notation for their elements."""

from __future__ import annotations

ENV_NS = "urn:vn-exchange:envelope:1"
DOSSIER_NS = "urn:vn-exchange:dossier:1"
RECEIPT_NS = "urn:vn-exchange:receipt:1"
STATUS_NS = "urn:vn-exchange:status:1"
BUNDLE_NS = "urn:vn-exchange:bundle:1"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SHA256_URI = "http://www.w3.org/2001/04/xmlenc#sha256"


def q(name: str, ns: str = ENV_NS) -> str:
    """Clark notation for an element of namespace ``ns``."""
    return f"{{{ns}}}{name}"
