"""Reusing an earlier PostgreSQL catalog capture, one relation family at a time.

A capture of a 10,000-table catalog digests 120k objects, and most runs change a handful.
Every object of the family kinds (see ``catalog_family.FAMILY_KINDS``) belongs to one
relation, its *family*: a table with its columns, indexes, constraints, triggers, policies,
rules and statistics. A capture records, besides its objects, what it needs to tell later
which families may have changed since:

- the snapshot it was taken under (``pg_current_snapshot()``, before anything was read) and
  its own transaction id. A catalog row whose ``xmin`` that snapshot does not see, or that
  its own transaction wrote, was written since (``UPDATE`` writes a new row version, so
  this covers updates too);
- how many rows each family has in the catalogs where a plain ``DELETE`` can remove one
  (``DROP INDEX``, ``DROP TRIGGER``, ``COMMENT ... IS NULL``, ``NO INHERIT``, ``ALTER
  EXTENSION ... DROP``, ...), and the index state flags, which PostgreSQL may update in
  place;
- the names of every schema, role and tablespace: objects render them, and nothing in the
  catalogs links an object to them that this check could follow.

A later capture recomputes a family when a row of it was written since, when its counts
differ, or when it is one dependency (``pg_depend``, either way) away from such a family or
from a changed database-wide object (a function, a type, a collation...). That covers names
rendered from another object: a renamed table changes the foreign keys that reference it,
the views over it and its inheritance children, and each of those has a ``pg_depend`` row
pointing at it. Every other kind (schemas, functions, types, roles, extensions...) and the
protected rows are recaptured every time. Anything unusual falls back to a full capture:
a renamed schema, role or tablespace; a changed built-in object; a changed enum label or
type I/O function (either shows in objects more than one dependency away); another
database, server start or catalog code; a snapshot too far in the past. ``tests/test_postgis_state.py``
holds reused captures byte-equal to full ones across each of these changes.

A capture taken in a transaction that has written nothing, or one kept until its
transaction commits, may also be saved to a local cache file so that the next process
starts from it. ``KFM_CAPTURE_CACHE`` sets the directory, or ``off`` turns reuse off
altogether (every capture is then a full one). A run that commits also leaves its state in
the governance schema (``shared_state``): a process with no cache file for the database
starts from there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from airflow_kfm_migrations.util.cache import cache_dir as cache_dir_of

CACHE_FORMAT = "kfm-pg-catalog-state.v1"
FIRST_NORMAL_OID = 16384  # OIDs below it belong to objects built into the server
MAX_SNAPSHOT_AGE = 1 << 30  # transactions; beyond it 32-bit xmin comparisons are not trusted

IDENT_QUERY = """
    SELECT pg_current_snapshot()::text, pg_current_xact_id_if_assigned()::text, d.oid::bigint,
           pg_postmaster_start_time()::text
    FROM pg_catalog.pg_database d WHERE d.datname = current_database()"""

NAMES_QUERY = """
    SELECT 'n' || oid::text, nspname::text FROM pg_catalog.pg_namespace
    UNION ALL SELECT 'r' || oid::text, rolname::text FROM pg_catalog.pg_roles
    UNION ALL SELECT 't' || oid::text, spcname::text FROM pg_catalog.pg_tablespace"""


# Where each kind of catalog object keeps the relation it belongs to (its family).
_OWNER = {
    "pg_constraint": "NULLIF(x.conrelid, 0)",
    "pg_trigger": "x.tgrelid",
    "pg_rewrite": "x.ev_class",
    "pg_policy": "x.polrelid",
    "pg_statistic_ext": "x.stxrelid",
    "pg_attrdef": "x.adrelid",
    "pg_type": "NULLIF(x.typrelid, 0)",
}


def _fam_of(classid: str, objid: str) -> str:
    """The family of the catalog object (classid, objid), or NULL for a database-wide one."""
    whens = " ".join(
        f"WHEN 'pg_catalog.{cat}'::regclass THEN (SELECT {col} FROM pg_catalog.{cat} x WHERE x.oid = {objid})"
        for cat, col in _OWNER.items()
    )
    return (
        f"CASE {classid} WHEN 'pg_catalog.pg_class'::regclass THEN COALESCE((SELECT x.indrelid "
        f"FROM pg_catalog.pg_index x WHERE x.indexrelid = {objid}), {objid}) {whens} END"
    )


# Rows per family in the catalogs where a DELETE alone can remove one, and the index flags,
# packed into one integer (rows * 2^32 + flags): a state holds one per relation, and a Python
# int, unlike a tuple, is nothing for the cyclic collector to scan.
# (An index's pg_class row goes with its pg_index row; a sequence's owner is a pg_depend row.)
COUNTS_QUERY = f"""
    SELECT fam::bigint, (sum(n) * 4294967296 + sum(w))::bigint FROM (
        SELECT c.oid AS fam, 1 AS n, 0 AS w FROM pg_catalog.pg_class c WHERE c.relkind NOT IN ('i', 'I')
        UNION ALL SELECT x.indrelid, count(*), sum(1 + (NOT x.indisvalid)::int + 2 * (NOT x.indisready)::int
               + 4 * (NOT x.indislive)::int + 8 * x.indisclustered::int + 16 * x.indisreplident::int)
        FROM pg_catalog.pg_index x GROUP BY 1
        UNION ALL SELECT conrelid, count(*), 0 FROM pg_catalog.pg_constraint WHERE conrelid <> 0 GROUP BY 1
        UNION ALL SELECT tgrelid, count(*), 0 FROM pg_catalog.pg_trigger GROUP BY 1
        UNION ALL SELECT polrelid, count(*), 0 FROM pg_catalog.pg_policy GROUP BY 1
        UNION ALL SELECT ev_class, count(*), 0 FROM pg_catalog.pg_rewrite GROUP BY 1
        UNION ALL SELECT stxrelid, count(*), 0 FROM pg_catalog.pg_statistic_ext GROUP BY 1
        UNION ALL SELECT inhrelid, count(*), 0 FROM pg_catalog.pg_inherits GROUP BY 1
        UNION ALL SELECT inhparent, count(*), 0 FROM pg_catalog.pg_inherits GROUP BY 1
        UNION ALL SELECT adrelid, count(*), 0 FROM pg_catalog.pg_attrdef GROUP BY 1
        UNION ALL SELECT {_fam_of("ds.classoid", "ds.objoid")}, 1, 0
        FROM pg_catalog.pg_description ds
        WHERE ds.classoid <> 'pg_catalog.pg_proc'::regclass
        UNION ALL SELECT {_fam_of("d.classid", "d.objid")}, 1, 0
        FROM pg_catalog.pg_depend d WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
        UNION ALL SELECT sq.oid, (SELECT count(*) FROM pg_catalog.pg_depend d
            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = sq.oid AND d.deptype IN ('a', 'i')), 0
        FROM pg_catalog.pg_class sq WHERE sq.relkind = 'S'
    ) r WHERE fam IS NOT NULL GROUP BY fam"""

# Catalogs whose rows belong to a family: (table, alias, family expression).
_FAMILY_ROWS = (
    ("pg_class", "c", "COALESCE((SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = c.oid), c.oid)"),
    (
        "pg_attribute",
        "a",
        "COALESCE((SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = a.attrelid), a.attrelid)",
    ),
    ("pg_attrdef", "x", "x.adrelid"),
    ("pg_index", "x", "x.indrelid"),
    ("pg_constraint", "x", "NULLIF(x.conrelid, 0)"),
    ("pg_trigger", "x", "x.tgrelid"),
    ("pg_policy", "x", "x.polrelid"),
    ("pg_rewrite", "x", "x.ev_class"),
    ("pg_statistic_ext", "x", "x.stxrelid"),
    ("pg_inherits", "x", "x.inhrelid"),
    ("pg_inherits", "x", "x.inhparent"),
    ("pg_sequence", "x", "x.seqrelid"),
    ("pg_partitioned_table", "x", "x.partrelid"),
    ("pg_type", "x", "NULLIF(x.typrelid, 0)"),
)
# Database-wide catalogs with OIDs: a changed row marks the families that depend on it.
_GLOBAL_ROWS = (
    "pg_proc",
    "pg_type",
    "pg_constraint",
    "pg_collation",
    "pg_operator",
    "pg_opclass",
    "pg_opfamily",
    "pg_namespace",
    "pg_ts_config",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_language",
    "pg_extension",
    "pg_am",
    "pg_foreign_server",
    "pg_foreign_data_wrapper",
    "pg_conversion",
    "pg_cast",
)


def _xid_list(xids: list[int]) -> str:
    return "'{" + ",".join(str(x & 0xFFFFFFFF) for x in sorted(set(xids))) + "}'::xid[]"


def new_rows_query(xmax: int, xids: list[int]) -> str:
    """Family and database-wide rows written since a snapshot: those whose xmin it did not
    see (at or after its xmax, or in progress then), and those of the capture's own
    transaction. ``age(xmin)`` compares 32-bit ids relative to now, as VACUUM does."""
    new = "(age({a}.xmin) <= (SELECT lim FROM b)" + (f" OR {{a}}.xmin = ANY({_xid_list(xids)})" if xids else "") + ")"

    def cond(alias: str) -> str:
        return new.replace("{a}", alias)

    parts = [
        f"SELECT 'f'::text, ({fam})::bigint, NULL::bigint FROM pg_catalog.{table} {a} WHERE {cond(a)}"
        for table, a, fam in _FAMILY_ROWS
    ]
    parts.append(
        f"SELECT 'f', ({_fam_of('d.classid', 'd.objid')})::bigint, NULL FROM pg_catalog.pg_depend d WHERE {cond('d')}"
    )
    parts.append(
        f"SELECT 'f', ({_fam_of('ds.classoid', 'ds.objoid')})::bigint, NULL FROM pg_catalog.pg_description ds "
        f"WHERE {cond('ds')}"
    )
    parts += [
        f"SELECT 'g', x.oid::bigint, 'pg_catalog.{table}'::regclass::oid::bigint FROM pg_catalog.{table} x "
        f"WHERE {cond('x')}"
        for table in _GLOBAL_ROWS
    ]
    # Changes whose effect can reach objects more than one dependency away: an enum label
    # renders inside constants of the enum, of its arrays, domains, ranges and composites; a
    # type's I/O or typmod function renders every column of the type. Either means a full
    # capture.
    parts += [
        f"SELECT 'x', x.enumtypid::bigint, NULL FROM pg_catalog.pg_enum x WHERE {cond('x')}",
        f"SELECT 'x', p.oid::bigint, NULL FROM pg_catalog.pg_proc p WHERE {cond('p')} AND EXISTS (SELECT 1 "
        "FROM pg_catalog.pg_type t WHERE p.oid IN (t.typinput, t.typoutput, t.typreceive, t.typsend, t.typmodin, "
        "t.typmodout, t.typanalyze, t.typsubscript))",
    ]
    return f"WITH b AS (SELECT age('{xmax & 0xFFFFFFFF}'::xid) AS lim) " + " UNION ALL ".join(parts)


# A family's member objects: (their pg_depend class, catalog, key column, column naming the relation).
_MEMBERS = (
    ("pg_class", "pg_index", "indexrelid", "indrelid"),
    ("pg_constraint", "pg_constraint", "oid", "conrelid"),
    ("pg_trigger", "pg_trigger", "oid", "tgrelid"),
    ("pg_rewrite", "pg_rewrite", "oid", "ev_class"),
    ("pg_policy", "pg_policy", "oid", "polrelid"),
    ("pg_statistic_ext", "pg_statistic_ext", "oid", "stxrelid"),
    ("pg_attrdef", "pg_attrdef", "oid", "adrelid"),
)


def neighbours_query(fams: set[int], sources: list[tuple[int, int]]) -> str:
    """The families one pg_depend edge away (either way) from the given families' objects
    or from the given database-wide objects (classid, oid)."""
    arr = "'{" + ",".join(str(int(f)) for f in sorted(fams)) + "}'::oid[]"
    parts = [
        f"SELECT 'pg_catalog.pg_class'::regclass::oid, c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY({arr})",
        f"SELECT 'pg_catalog.pg_type'::regclass::oid, c.reltype FROM pg_catalog.pg_class c "
        f"WHERE c.oid = ANY({arr}) AND c.reltype <> 0",
    ] + [
        f"SELECT 'pg_catalog.{cls}'::regclass::oid, x.{key} FROM pg_catalog.{cat} x WHERE x.{owner} = ANY({arr})"
        for cls, cat, key, owner in _MEMBERS
    ]
    members = " UNION ALL ".join(parts)
    if sources:
        cls = "'{" + ",".join(str(c) for c, _ in sources) + "}'::oid[]"
        oids = "'{" + ",".join(str(o) for _, o in sources) + "}'::oid[]"
        members += f" UNION ALL SELECT * FROM unnest({cls}, {oids})"
    return f"""
        WITH src(c, o) AS MATERIALIZED ({members})
        SELECT ({_fam_of("d.classid", "d.objid")})::bigint FROM pg_catalog.pg_depend d
        JOIN src ON d.refclassid = src.c AND d.refobjid = src.o
        UNION
        SELECT ({_fam_of("d.refclassid", "d.refobjid")})::bigint FROM pg_catalog.pg_depend d
        JOIN src ON d.classid = src.c AND d.objid = src.o"""


# -- state -------------------------------------------------------------------


class FamilyObject(msgspec.Struct, array_like=True, frozen=True, gc=False):
    id: str
    kind: str
    schema: str | None
    table: str | None
    digest: str
    fam: int
    node: bytes  # Merkle leaf and tree node (digest.merkle_leaf_node)


class CatalogState(msgspec.Struct, frozen=True):
    """What one capture saw, enough to tell a later one which families to recompute."""

    format: str
    key: str
    snapshot: str  # pg_snapshot text, taken before the capture read anything
    own_xid: int | None  # the capture's transaction, when it had an id
    counts: dict[int, int]  # family -> rows * 2^32 + index flags (COUNTS_QUERY)
    names: dict[str, str]
    objects: list[FamilyObject]  # family objects only
    globals_digest: str  # sha256 over the other database-scoped kinds' sorted Merkle nodes
    schema_root: str  # the capture's schema fingerprint


def _parse_snapshot(text: str) -> tuple[int, int, list[int]]:
    xmin, xmax, xip = text.split(":")
    return int(xmin), int(xmax), [int(x) for x in xip.split(",") if x]


def enabled() -> bool:
    """Reuse is on unless ``KFM_CAPTURE_CACHE`` says ``off``."""
    return cache_dir() is not None


def cache_dir() -> Path | None:
    return cache_dir_of("KFM_CAPTURE_CACHE")


# What a state depends on: the SQL that computes the digests, this module, the capture that
# builds the states, and the Merkle leaves they keep (paths relative to this package).
_CODE = (
    "catalog_sql.py",
    "catalog_family.py",
    "catalog_global.py",
    "catalog.py",
    "state.py",
    "capture.py",
    "../../util/digest.py",
)


@functools.cache
def code_fingerprint() -> str:
    """A digest of the code states depend on: a state saved by other code is never reused."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256(CACHE_FORMAT.encode())
    for name in _CODE:
        with contextlib.suppress(OSError):
            h.update((here / name).read_bytes())
    return h.hexdigest()


def state_key(conn_id: str, db_oid: int, started: str) -> str:
    """Which database a state belongs to: a new server start or another database is another key."""
    return hashlib.sha256(f"{code_fingerprint()}\0{conn_id}\0{db_oid}\0{started}".encode()).hexdigest()


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(CatalogState)


def encode(state: CatalogState) -> bytes:
    """The bytes of a state, as the cache file and the governance schema keep them."""
    return _ENCODER.encode(state)


def decode(data: bytes, key: str) -> CatalogState | None:
    """The state ``data`` holds, if it is one for ``key`` in this format."""
    try:
        state = _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if state.format != CACHE_FORMAT or state.key != key:
        return None
    return state


def _path(folder: Path, key: str) -> Path:
    return folder / f"pg-catalog-{key[:32]}.msgpack"


def cached(key: str) -> bool:
    """Whether a cache file for ``key`` exists (the capture then looks no further)."""
    folder = cache_dir()
    return folder is not None and _path(folder, key).is_file()


def load(key: str) -> CatalogState | None:
    """The cached state for ``key``, or None if there is none or it cannot be trusted."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        data = _path(folder, key).read_bytes()
    except OSError:
        return None
    return decode(data, key)


def snapshot_xmax(state: CatalogState) -> int:
    """The xmax of the snapshot a state was taken under: a later state has a larger one."""
    return _parse_snapshot(state.snapshot)[1]


def save(state: CatalogState) -> None:
    """Best effort: a read-only or missing cache directory only costs speed."""
    folder = cache_dir()
    if folder is None:
        return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = _path(folder, state.key)
        fd, tmp = tempfile.mkstemp(prefix=".pg-catalog-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(encode(state))
            os.replace(tmp, path)
        except BaseException:  # whatever interrupted the write, no half-written file is left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@dataclass
class Probe:
    """The start of a capture: its snapshot, own transaction, key, names and counts."""

    snapshot: str
    own_xid: int | None
    key: str
    names: dict[str, str]
    counts: dict[int, int]


def identify(cur: Any, conn_id: str) -> tuple[str, str, int | None]:
    """(key, snapshot, own transaction id): the first thing a capture reads."""
    cur.execute(IDENT_QUERY)
    snapshot, own, db_oid, started = cur.fetchone()
    return state_key(conn_id, db_oid, started), snapshot, int(own) if own is not None else None


def results(cur: Any, *queries: str) -> list[list[Any]]:
    """The rows of each query, sent together (no parameters): one round trip, where a thread
    building objects meanwhile would otherwise make each wait for the interpreter lock."""
    cur.execute(";\n".join(queries))
    out = [cur.fetchall()]
    while cur.nextset():
        out.append(cur.fetchall())
    return out


# The capture turns nested loops off for its wide queries; lookups by OID want them.
NESTED_LOOPS_ON = "SELECT set_config('enable_nestloop', 'on', true)"
NESTED_LOOPS_OFF = "SELECT set_config('enable_nestloop', 'off', true)"


def probe(cur: Any, ident: tuple[str, str, int | None]) -> Probe:
    key, snapshot, own = ident
    names_rows, count_rows = results(cur, NAMES_QUERY, COUNTS_QUERY)
    names = {k: v for k, v in names_rows}
    counts = {int(f): int(n) for f, n in count_rows}
    return Probe(snapshot, own, key, names, counts)


def dirty_families(cur: Any, prior: CatalogState, now: Probe) -> set[int] | None:
    """The families to recompute since ``prior``, or None when only a full capture will do."""
    if prior.key != now.key or prior.format != CACHE_FORMAT:
        return None
    # A renamed schema, role or tablespace renames objects without touching their rows.
    for k, name in prior.names.items():
        if now.names.get(k, name) != name:
            return None
    p_xmin, p_xmax, p_xip = _parse_snapshot(prior.snapshot)
    _n_xmin, n_xmax, _n_xip = _parse_snapshot(now.snapshot)
    if not 0 <= n_xmax - p_xmax <= MAX_SNAPSHOT_AGE or p_xmin > p_xmax:
        return None
    dirty = {f for f in set(prior.counts) | set(now.counts) if prior.counts.get(f) != now.counts.get(f)}
    xids = p_xip + ([prior.own_xid] if prior.own_xid is not None else [])
    cur.execute(new_rows_query(p_xmax, xids))
    sources: list[tuple[int, int]] = []
    for what, a, b in cur.fetchall():
        if what == "f":
            if a is not None:
                dirty.add(int(a))
        elif what == "x":
            return None  # see new_rows_query
        else:
            if int(a) < FIRST_NORMAL_OID:
                return None  # a built-in object was altered
            sources.append((int(b), int(a)))
    if dirty or sources:
        _, rows = results(cur, NESTED_LOOPS_ON, neighbours_query(dirty, sources))
        dirty |= {int(f) for (f,) in rows if f is not None}
    return dirty
