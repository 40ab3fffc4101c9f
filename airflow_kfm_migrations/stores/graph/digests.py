"""Canonical bytes and digests of the values the Neo4j driver returns.

Baselines fingerprint protected nodes by the sha256 of RFC 8785 (JCS) bytes of a typed
JSON form in which values JSON cannot tell apart (``38`` and ``38.0``, big integers, bytes,
temporal and spatial values) stay apart. msgspec writes the bytes in C whenever they equal
RFC 8785's; the ``rfc8785`` package writes the rest.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import suppress
from typing import Any

import msgspec
import rfc8785

SAFE_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles: larger integers would not be exact


def jsonable(value: Any) -> Any:
    """The typed JSON form of a value the driver returns, one-to-one: values JSON cannot tell
    apart or carry are tagged maps (Neo4j property values are never maps themselves).

    - integers beyond +-(2**53 - 1) -> ``{"int": "<digits>"}``;
    - floats that are integral (``38.0`` is not the integer ``38`` in Neo4j), ``-0.0``, NaN and
      infinities -> ``{"float": repr}``; any other float stays a JSON number, which never reads
      as an integer;
    - bytes -> ``{"bytes": hex}``; temporal and spatial values -> ``{type name: str(value)}``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -SAFE_INT <= value <= SAFE_INT else {"int": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) and not value.is_integer() else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    return {type(value).__name__: str(value)}


def plain(value: Any) -> bool:
    """True when ``value`` is its own typed JSON form (``jsonable(value) == value``) and
    sorted-key compact JSON of it is byte for byte RFC 8785: strings, booleans, null, integers
    within +-(2**53 - 1), floats whose shortest ``repr`` RFC 8785 keeps as it is (finite, not
    integral, 1e-4 <= |x| < 1e16: no exponent, no ``.0``), and lists and maps of those whose
    keys are ASCII (so that code point order is RFC 8785's UTF-16 order). Exact types only."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -SAFE_INT <= value <= SAFE_INT
    if t is float:
        return 1e-4 <= abs(value) < 1e16 and not value.is_integer()
    if t is dict:
        try:
            if not "".join(value).isascii():
                return False
        except TypeError:  # a key that is not a string
            return False
        items = value.values()
    elif t is list or t is tuple:
        items = value
    else:
        return False
    for v in items:  # noqa: SIM110 (a loop with strings inline is twice as fast as all())
        if type(v) is not str and not plain(v):
            return False
    return True


_COMPACT = msgspec.json.Encoder(order="sorted").encode


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of ``jsonable(value)``. When ``plain(value)`` msgspec writes them
    in C (sorted keys, no whitespace, UTF-8, the same escapes and float digits: a hypothesis
    test in tests/test_graph.py holds the two equal); the ``rfc8785`` package otherwise."""
    if plain(value):
        with suppress(UnicodeEncodeError):  # lone surrogates: rfc8785 rejects them below
            return _COMPACT(value)
    return rfc8785.dumps(jsonable(value))


def digest(value: Any) -> str:
    """``util.digest.digest_json(jsonable(value))``, faster."""
    return hashlib.sha256(canonical(value)).hexdigest()


def _plain_properties(props: dict[str, Any]) -> bool:
    """``plain(props)`` for one property map, with the scalar cases inline (1,000 maps)."""
    try:
        if not "".join(props).isascii():
            return False
    except TypeError:  # a key that is not a string
        return False
    for v in props.values():
        t = type(v)
        if t is str or t is bool:
            continue
        if t is int:
            if -SAFE_INT <= v <= SAFE_INT:
                continue
            return False
        if t is float:
            if 1e-4 <= abs(v) < 1e16 and not v.is_integer():
                continue
            return False
        if t is list and all([type(x) is str for x in v]):
            continue
        if not plain(v):
            return False
    return True


def node_digests(nodes: list[list[Any]]) -> list[str]:
    """Sorted digests of protected nodes, one per ``[labels, properties]``: the sha256 of
    ``canonical([sorted labels, full property map])`` (no elementId), so that the list
    depends neither on the order nor on the identity of the nodes."""
    sha256, compact = hashlib.sha256, _COMPACT
    out = []
    for labels, props in nodes:
        if len(labels) > 1:
            labels = sorted(labels)
        item = [labels, props]
        if type(props) is dict and _plain_properties(props) and all([type(x) is str for x in labels]):
            try:
                data = compact(item)
            except UnicodeEncodeError:  # lone surrogates: rfc8785 rejects them
                data = canonical(item)
        else:
            data = canonical(item)
        out.append(sha256(data).hexdigest())
    out.sort()
    return out


def relationship_digests(rels: list[list[Any]]) -> list[str]:
    """Sorted digests of the relationships of protected nodes, one per
    ``[labels, properties, type, outgoing, relationship properties, other end's elementId]``:
    the sha256 of ``canonical([sorted labels, properties, type, "out" | "in", relationship
    properties, other end's elementId])``. The protected end is named by its content (as in
    ``node_digests``), the other end by its identity: a relationship moved to another node
    changes the digest, a neighbour relabelled or updated does not."""
    out = []
    for labels, props, rel_type, outgoing, rel_props, other in rels:
        item = [sorted(labels), props, rel_type, "out" if outgoing else "in", rel_props, other]
        out.append(hashlib.sha256(canonical(item)).hexdigest())
    out.sort()
    return out
