"""Fingerprints as earlier releases computed them, for the ledger entries they wrote.

Earlier releases differ in two ways. Their schema fingerprint covered the database- and
cluster-level objects too (now in the baseline's ``global_fingerprint``), with the cluster's
databases, tablespaces and replication as one object. And a few digests held per-database
OIDs (an index's operator classes and collations, a constraint's or statistics object's
expression naming a user's or an extension's type, function or operator, an extension's
configuration tables, user mappings, objects added to the system schemas), which are named
now (``catalog_sql.FIRST_USER_OID``). Everything else digests as it did.

A rollback of an apply such a release recorded compares the ledger's fingerprints with
those the earlier release would compute now: over the baseline's objects, with those
digests as it computed them (``LEGACY_QUERY``). The schema fingerprint also covered every
role and database of the server, which other sessions change all the time; so, when the
apply's pre-baseline is at hand and the ledger's fingerprint proves it genuine (it is that
baseline's Merkle root), the database's own objects are compared with it one by one.
"""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline
from airflow_kfm_migrations.stores.postgis.attribution import is_global
from airflow_kfm_migrations.stores.postgis.capture import digest_rows
from airflow_kfm_migrations.stores.postgis.catalog_family import family_queries
from airflow_kfm_migrations.stores.postgis.catalog_global import LEGACY_GLOBAL_QUERIES
from airflow_kfm_migrations.stores.postgis.catalog_sql import EXT_CTE
from airflow_kfm_migrations.util.digest import leaf_raw, merkle_root_raw

_FAMILY = family_queries(legacy=True)
# The objects whose digests held OIDs, as earlier releases digested them, and the old
# cluster object. Each query returns: kind, id, schema, table, digest, family.
LEGACY_QUERY = (
    EXT_CTE
    + "SELECT * FROM ("
    + " UNION ALL ".join(
        f"({q})"
        for q in [*(_FAMILY[k] for k in ("index", "constraint", "statistics")), *LEGACY_GLOBAL_QUERIES.values()]
    )
    + ") o(kind, id, schema, tbl, digest, fam)"
)


def _root(pairs: dict[str, str]) -> str:
    return merkle_root_raw([leaf_raw(i, d) for i, d in pairs.items()])


def restored(cur: Any, apply_pre: Baseline | None, post: Baseline, schema: str, protected: str) -> tuple[bool, bool]:
    """Whether the store ``post`` was taken of (read through ``cur``, in its transaction) has
    the schema and the protected objects an earlier release recorded as the fingerprints
    ``schema`` and ``protected``. ``apply_pre``: that apply's pre-baseline, when at hand."""
    old = {oid: dig for _kind, oid, _schema, _table, dig, _fam in digest_rows(cur, LEGACY_QUERY)}
    own: dict[str, str] = {}  # the database's own objects, as the earlier release digested them
    shared: dict[str, str] = {}  # the database- and cluster-level ones
    guarded: dict[str, str] = {}
    for o in post.objects:
        dig = old.get(o.id, o.digest)
        if o.protected:
            guarded[o.id] = dig
        if o.kind == "rows":
            continue
        if not is_global(o.kind, o.schema_):
            own[o.id] = dig
        elif o.kind != "cluster":  # one object then: the old one comes from LEGACY_QUERY
            shared[o.id] = dig
    shared |= {oid: dig for oid, dig in old.items() if oid.startswith("cluster:")}
    same_protected = _root(guarded) == protected
    if _root(own | shared) == schema:
        return True, same_protected
    if apply_pre is None or apply_pre.global_fingerprint is not None:
        return False, same_protected
    recorded = [o for o in apply_pre.objects if o.kind != "rows"]
    if _root({o.id: o.digest for o in recorded}) != schema:  # not the pre-baseline that entry recorded
        return False, same_protected
    return own == {o.id: o.digest for o in recorded if not is_global(o.kind, o.schema_)}, same_protected
