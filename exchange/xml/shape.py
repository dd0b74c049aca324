"""The shape check: one linear pass over a parsed tree before anything costlier looks at it.

Schema validation and signature verification cost more than parsing, and some of their costs
grow faster than the input: xmlschema reports an element's every unknown attribute with the
element's whole attribute map (2,000 attributes: 33 s), and signxml slows down with each element
padded into a signature (200,000 of them: 74 s). A profile states what our documents can hold at
most (nodes, attributes, children, depth) and the exact children of the elements that carry the signature;
``check`` walks the tree once and refuses anything outside it with ``BadShape``, so every input up
to the size cap is accepted or refused in time linear in its size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from lxml import etree

from exchange.errors import BadShape
from exchange.xml.names import DOSSIER_NS, DS_NS, q

MAX_NODES = 16_384
"""Elements, comments and processing instructions. The schemas allow about 12,000 elements at
most (a dossier of 100 documents with 20 attachments each, or a receipt of 1,000 acks)."""

MAX_ATTRIBUTES = 4_096
"""Attributes in the whole document; a real envelope has a few dozen, at most a few hundred."""

MAX_ATTRIBUTES_PER_ELEMENT = 4
"""No element of our schemas, the XML-DSig ones included, declares more than three."""

MAX_CHILDREN = 1_024
"""Child nodes of one element. The schemas allow 1,000 acks in a receipt, 200 rows in a
processing-control slip; xmlschema's cost is quadratic in the children of one element."""

MAX_DEPTH = 12
"""The deepest real path is Envelope/Body/Dossier/Documents/Document/Attachment/Content (7)."""


@dataclass(frozen=True)
class Profile:
    """What one kind of document may hold at most, and the exact children of some elements."""

    root: str
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_nodes: int = MAX_NODES
    max_attributes: int = MAX_ATTRIBUTES
    max_attributes_per_element: int = MAX_ATTRIBUTES_PER_ELEMENT
    max_children: int = MAX_CHILDREN
    max_depth: int = MAX_DEPTH


def _ds(name: str) -> str:
    return q(name, DS_NS)


ENVELOPE = Profile(
    root=q("Envelope"),
    children={
        q("Envelope"): (q("Header"), q("Body"), _ds("Signature")),
        _ds("Signature"): (_ds("SignedInfo"), _ds("SignatureValue"), _ds("KeyInfo")),
        _ds("KeyInfo"): (_ds("X509Data"),),
        _ds("X509Data"): (_ds("X509Certificate"),),
    },
)
"""A signed envelope: a header, a body and the signature, which holds no ds:Object and carries
the one certificate in KeyInfo, nothing else."""

DOSSIER = Profile(root=q("Dossier", DOSSIER_NS))
"""A dossier file, as an agency system hands it over."""


def check(root: etree._Element, profile: Profile, source: str = "input") -> None:
    """Refuse ``root`` with ``BadShape`` unless it is within ``profile``; one pass, no copies.

    This runs on every envelope a node opens, so it touches each node once and reads a tag only
    where the profile names one (lxml builds a new string for every ``.tag``)."""
    tag = root.tag
    if tag != profile.root:
        raise BadShape(f"{source}: the root is {tag}, expected {profile.root}")
    attributes = 0
    for nodes, el in enumerate(root.iter(), 1):  # elements, comments and processing instructions
        if len(el) > profile.max_children:
            raise BadShape(f"{_where(el, source)}: {len(el)} child nodes in {el.tag}, at most "
                           f"{profile.max_children} are allowed")
        keys = el.keys()
        if keys:
            attributes += len(keys)
            if len(keys) > profile.max_attributes_per_element:
                raise BadShape(f"{_where(el, source)}: {len(keys)} attributes on {el.tag}, at most "
                               f"{profile.max_attributes_per_element} are allowed")
        if nodes > profile.max_nodes:
            raise BadShape(f"{source}: more than {profile.max_nodes} elements, comments and "
                           "processing instructions")
    if attributes > profile.max_attributes:
        raise BadShape(f"{source}: {attributes} attributes, at most {profile.max_attributes} are allowed")
    too_deep: list[etree._Element] = _deeper_than(profile.max_depth)(root)  # type: ignore[assignment]
    if too_deep:
        raise BadShape(f"{_where(too_deep[0], source)}: elements nested more than {profile.max_depth} deep")
    _check_profiled(root, tag, profile.children, source)


def _check_profiled(el: etree._Element, tag: str, children: Mapping[str, tuple[str, ...]], source: str) -> None:
    """The exact children of ``el`` and, below it, of every element the profile names: a walk
    down the named path only (the profile's elements hold one another: Envelope, Signature, ...)."""
    expected = children.get(tag)
    if expected is None:
        return
    kids = [(child, child.tag) for child in el]
    found = tuple(name for _, name in kids if isinstance(name, str))
    if found != expected:
        raise BadShape(f"{_where(el, source)}: {tag} holds {_names(found)}, expected exactly {_names(expected)}")
    for child, name in kids:
        if name in children:
            _check_profiled(child, name, children, source)


@functools.cache
def _deeper_than(depth: int) -> etree.XPath:
    """The first element nested deeper than ``depth`` (libxml2 walks the levels, in C)."""
    return etree.XPath("(/*" + "/*" * depth + ")[1]")


def _where(el: etree._Element, source: str) -> str:
    return f"{source}:{el.sourceline}" if el.sourceline else source


def _names(tags: tuple[str, ...]) -> str:
    shown = ", ".join(tag.rsplit("}", 1)[-1] for tag in tags[:5])
    more = f" and {len(tags) - 5} more" if len(tags) > 5 else ""
    return f"({shown}{more})" if tags else "nothing"
