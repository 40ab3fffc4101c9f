"""Content addressing: RFC 8785 canonical JSON, sha256, Merkle roots."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import rfc8785


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON-compatible value."""
    return rfc8785.dumps(obj)


def digest_json(obj: Any) -> str:
    return sha256_bytes(canonical(obj))


def merkle_root(leaves: Iterable[str]) -> str:
    """Merkle root over hex digests, sorted so that the root does not depend on order.

    Leaves and inner nodes are domain-separated (0x00 / 0x01) so that a leaf can never
    pose as an inner node. The empty tree has the digest of the empty string.
    """
    return merkle_root_raw([bytes.fromhex(x) for x in leaves])


def merkle_root_raw(leaves: list[bytes]) -> str:
    """:func:`merkle_root` over raw 32-byte digests (hex order and byte order agree)."""
    return merkle_root_nodes([merkle_leaf_node(x) for x in leaves])


def merkle_leaf_node(leaf: bytes) -> bytes:
    """A 32-byte leaf followed by its tree node (domain-separated with 0x00): what
    :func:`merkle_root_nodes` takes, so that a caller can hash each leaf as it arrives."""
    return leaf + hashlib.sha256(b"\x00" + leaf).digest()


def merkle_root_nodes(leaf_nodes: list[bytes]) -> str:
    """:func:`merkle_root` from :func:`merkle_leaf_node` values. Sorts ``leaf_nodes``."""
    sha = hashlib.sha256
    leaf_nodes.sort()  # by leaf: the first 32 bytes decide
    level = [x[32:] for x in leaf_nodes]
    if not level:
        return sha256_bytes(b"")
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def leaf(object_id: str, digest: str) -> str:
    """The Merkle leaf of one object: sha256 over its id and digest, NUL-separated
    (an id never contains NUL), so neither can be shifted into the other."""
    return leaf_raw(object_id, digest).hex()


def leaf_raw(object_id: str, digest: str) -> bytes:
    return hashlib.sha256(f"{object_id}\x00{digest}".encode()).digest()


def dump_json(obj: Any) -> bytes:
    """Stable, human-readable JSON bytes (sorted keys, two-space indent, trailing newline).

    The bytes are those of ``json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)``
    (a test holds the two equal), floats aside: a large exponent is written ``1e16`` rather
    than ``1e+16``, and a non-finite float, which JSON cannot hold, becomes null. msgspec
    writes them in C, which matters for baselines of 100k+ objects: the standard library's
    indenting encoder is pure Python."""
    return msgspec.json.format(msgspec.json.encode(obj, order="sorted"), indent=2) + b"\n"


def write_json(path: Path, obj: Any) -> str:
    """Write ``obj`` atomically as stable JSON; return the sha256 of the bytes written."""
    data = dump_json(obj)
    write_bytes_atomic(path, data)
    return sha256_bytes(data)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def publish_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` hold what ``src`` holds, atomically: a hard link where the filesystem
    allows (no second copy of a large baseline), a copy elsewhere. Replacing ``dst`` later
    never changes ``src``: the link's name is replaced, not the file it pointed to."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or links not supported: copy the bytes
        tmp.write_bytes(src.read_bytes())
    tmp.replace(dst)
