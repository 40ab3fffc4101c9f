"""Content addressing: stable JSON bytes and Merkle roots."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_kfm_migrations.util.digest import dump_json, leaf, leaf_raw, merkle_root, merkle_root_raw

SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
JSONISH = st.recursive(SCALARS, lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(JSONISH)
def test_dump_json_is_the_standard_librarys_indented_sorted_json(value: object) -> None:
    expected = (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    assert dump_json(value) == expected


@settings(max_examples=200, deadline=None)
@given(st.recursive(SCALARS | st.floats(allow_nan=False, allow_infinity=False), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_dump_json_round_trips_floats(value: object) -> None:
    assert json.loads(dump_json(value)) == value


def _reference_root(leaves: list[str]) -> str:
    """The Merkle root as specified: sorted leaves, 0x00-prefixed leaf hashes, 0x01-prefixed
    pairs, an odd node promoted as is."""
    level = [hashlib.sha256(b"\x00" + bytes.fromhex(x)).digest() for x in sorted(leaves)]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            pair = level[i : i + 2]
            nxt.append(pair[0] if len(pair) == 1 else hashlib.sha256(b"\x01" + pair[0] + pair[1]).digest())
        level = nxt
    return level[0].hex()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1), st.binary(min_size=32, max_size=32)), max_size=70))
def test_merkle_root_matches_the_reference_and_ignores_order(items: list[tuple[str, bytes]]) -> None:
    leaves = [leaf(i, d.hex()) for i, d in items]
    assert merkle_root(leaves) == _reference_root(leaves)
    assert merkle_root(list(reversed(leaves))) == merkle_root(leaves)
    assert merkle_root_raw([leaf_raw(i, d.hex()) for i, d in items]) == merkle_root(leaves)
