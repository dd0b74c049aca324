"""An independent reader of edXML packages, written from the published structure (not from
``exchange.adapters.edxml``): every element in document order as a path of local names with its
text, and the namespace each one is in, so tests can check a package element by element."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from lxml import etree

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
XLINK = "http://www.w3.org/1999/xlink"


@dataclass(frozen=True)
class Node:
    path: str
    text: str
    attributes: dict[str, str]
    namespace: str


def nodes(data: bytes) -> list[Node]:
    """Every element of the document in order."""
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    found = []
    for el in root.iter(etree.Element):
        names = [etree.QName(a).localname for a in reversed(list(el.iterancestors()))] + [etree.QName(el).localname]
        attributes = {str(k): str(v) for k, v in el.attrib.items()}
        found.append(Node("/".join(names), (el.text or "").strip(), attributes, etree.QName(el).namespace or ""))
    return found


def children(data: bytes, path: str) -> list[str]:
    """The local names of the children of the first element at ``path``, in order."""
    depth = path.count("/") + 1
    all_nodes = nodes(data)
    start = next(i for i, n in enumerate(all_nodes) if n.path == path)
    names = []
    for n in all_nodes[start + 1:]:
        if not n.path.startswith(path + "/"):
            break
        if n.path.count("/") == depth:
            names.append(n.path.rsplit("/", 1)[1])
    return names


def texts(data: bytes, path: str) -> list[str]:
    return [n.text for n in nodes(data) if n.path == path]


def text(data: bytes, path: str) -> str:
    found = texts(data, path)
    assert len(found) == 1, f"{path}: {len(found)} elements"
    return found[0]


def attachments(data: bytes) -> list[dict[str, str]]:
    """Each ``AttachmentEncoded/Attachment`` as its children's texts, the content decoded."""
    root = etree.fromstring(data)
    found = []
    for item in root.iterfind(f"{{{NS}}}AttachmentEncoded/{{{NS}}}Attachment"):
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in item}
        fields["content"] = base64.b64decode("".join(fields.pop("ContentTransferEncoded").split())).decode("latin-1")
        found.append(fields)
    return found


def references(data: bytes) -> list[dict[str, str]]:
    root = etree.fromstring(data)
    found = []
    for ref in root.iterfind(f".//{{{NS}}}edXMLManifest/{{{NS}}}Reference"):
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in ref}
        fields["href"] = ref.get(f"{{{XLINK}}}href") or ""
        found.append(fields)
    return found
