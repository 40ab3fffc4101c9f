"""Who changed a database- or cluster-level object during a run: the run's own transaction,
or another session.

Objects that belong to no schema (``catalog_global``: the cluster's databases, tablespaces
and replication origins, roles, the database itself, casts, languages, event triggers, the
built-in objects' privileges...) are shared with everything else on the server. Another
session creating a database, a role or a large object while a run is under way changes them
too, and a run must not be refused for what it did not do.

A transaction's own writes to each system catalog are counted by the server
(``pg_stat_xact_sys_tables``; shared catalogs such as ``pg_database`` and ``pg_authid``
included), and every global kind's digest is read from a known set of catalogs
(``KIND_CATALOGS``). A changed global object is the run's own doing when its transaction
wrote one of them, and another session's when it wrote none: such a change is reported
(``global_object_changed_elsewhere``) and not judged. The counters see writes by
statements, functions, DO blocks and triggers alike; as a second witness that a script
cannot switch off (``SET track_counts = off`` inside a function), a catalog row the
transaction inserted or updated carries one of its transaction ids (``xmin``), which is
looked for in the catalogs behind an object the counters do not attribute.

What stays strict, judged as the run's own change whatever the counters say:

- a kind this module does not know;
- replication slots (``cluster:replication-slots``), which live in no catalog and are not
  transactional: nothing tells who created one;
- every global object of a non-transactional run: each statement commits on its own, so no
  transaction holds the run's writes.

A script can still change a global object from another session (``dblink``, a
``postgres_fdw`` loopback, ``COPY ... PROGRAM`` running ``psql``): that session's write is
indistinguishable from anyone else's. And a delete hidden from the counters (a role that may
set ``track_counts`` turning it off around ``DROP ROLE``) leaves no row to carry an ``xmin``.
Both need a role the migration should not run as (docs/stores/postgis.md, known limits).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow_kfm_migrations.contracts.models import DiffEntry, Finding
from airflow_kfm_migrations.stores.postgis.catalog_global import CLUSTER_KINDS

# The system catalogs each global kind's digest reads (see ``catalog_global``; a test holds
# every catalog a query names to this): its own, ``pg_authid`` for owners and ACLs,
# ``pg_namespace``, ``pg_proc`` and ``pg_type`` for reg* names, ``pg_depend`` for the kinds
# whose extension members the capture leaves out. A transaction that wrote none of them
# cannot have changed an object of the kind.
KIND_CATALOGS: dict[str, frozenset[str]] = {
    kind: frozenset(cats)
    for kind, cats in {
        "database": ("pg_database", "pg_db_role_setting", "pg_shdescription", "pg_authid"),
        "role": ("pg_authid", "pg_auth_members", "pg_db_role_setting", "pg_database", "pg_shdescription"),
        "builtin": ("pg_class", "pg_proc", "pg_type", "pg_namespace", "pg_language", "pg_authid"),
        "event_trigger": ("pg_event_trigger", "pg_proc", "pg_type", "pg_namespace", "pg_depend", "pg_authid"),
        "default_acl": ("pg_default_acl", "pg_namespace", "pg_authid"),
        "publication": ("pg_publication", "pg_publication_rel", "pg_class", "pg_namespace"),
        "foreign_server": ("pg_foreign_server", "pg_user_mapping", "pg_depend", "pg_authid"),
        "cast": ("pg_cast", "pg_proc", "pg_type", "pg_namespace", "pg_depend"),
        "language": ("pg_language", "pg_proc", "pg_namespace", "pg_depend", "pg_authid"),
        "foreign_data_wrapper": ("pg_foreign_data_wrapper", "pg_proc", "pg_namespace", "pg_depend", "pg_authid"),
        "access_method": ("pg_am", "pg_proc", "pg_namespace", "pg_depend"),
        "large_objects": ("pg_largeobject_metadata", "pg_authid"),
        "subscription": ("pg_subscription", "pg_database", "pg_authid"),
    }.items()
}
# The cluster objects, one per concern. None: cannot be attributed (judged strictly).
CLUSTER_CATALOGS: dict[str, frozenset[str] | None] = {
    "cluster:databases": frozenset(("pg_database", "pg_db_role_setting", "pg_shdescription", "pg_authid")),
    "cluster:tablespaces": frozenset(("pg_tablespace", "pg_shdescription", "pg_authid")),
    "cluster:replication-origins": frozenset(("pg_replication_origin",)),
    "cluster:replication-slots": None,
}
ALL_CATALOGS = sorted(set().union(*KIND_CATALOGS.values(), *(c for c in CLUSTER_CATALOGS.values() if c is not None)))

OWN, ELSEWHERE, STRICT = "own", "elsewhere", "strict"
FACT = "global_changes"  # the facts key: {object id: [OWN | ELSEWHERE | STRICT, detail]}


def is_global(kind: str, schema: str | None) -> bool:
    """A database- or cluster-level object: no declared scope can allow changing it."""
    return kind in CLUSTER_KINDS or (schema is None and kind != "schema")


def catalogs_of(object_id: str, kind: str) -> frozenset[str] | None:
    """The catalogs an object's digest is read from; None when it cannot be attributed."""
    if kind == "cluster":
        return CLUSTER_CATALOGS.get(object_id)
    return KIND_CATALOGS.get(kind)


# This transaction's inserts, updates and deletes per catalog (subtransactions included).
_WRITTEN_QUERY = """
    SELECT c.relname FROM pg_catalog.pg_class c
    WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relname = ANY(%s)
      AND pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid) + pg_catalog.pg_stat_get_xact_tuples_updated(c.oid)
          + pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid) > 0"""

# A row version this transaction (or one of its subtransactions) wrote. Its xmin, widened to
# 64 bits as the id that far after this transaction's own (its subtransactions' come later):
# one before the statement's snapshot xmax must still be in progress (another transaction's
# row is visible only once it has committed); one at or past xmax belongs to no transaction
# that had completed, and is visible, so it is this one's. (``age()`` would count from the
# transaction's id only if it had one when age() was first called in the transaction.) A
# frozen row of an xid more than 2^31 old can pass for one of this transaction's: that only
# makes the attribution stricter.
_MINE = (
    "CASE WHEN me.top IS NULL OR x.xmin::text::bigint < 3 OR (x.xmin::text::bigint - me.top % 4294967296 "
    "+ 4294967296) % 4294967296 >= 2147483648 THEN false "
    "WHEN me.top + (x.xmin::text::bigint - me.top % 4294967296 + 4294967296) % 4294967296 >= me.xmax THEN true "
    "ELSE pg_catalog.pg_xact_status((me.top + (x.xmin::text::bigint - me.top % 4294967296 + 4294967296) "
    "% 4294967296)::text::xid8) = 'in progress' END"
)


def _xmin_query(catalogs: Iterable[str]) -> str:
    me = (
        "WITH me AS (SELECT pg_catalog.pg_current_xact_id_if_assigned()::text::bigint AS top, "
        "pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint AS xmax) "
    )
    parts = [
        f"SELECT '{cat}' WHERE EXISTS (SELECT 1 FROM pg_catalog.{cat} x, me WHERE {_MINE})" for cat in sorted(catalogs)
    ]
    return me + " UNION ALL ".join(parts)


def _written(cur: Any, suspects: set[str]) -> tuple[set[str], set[str]]:
    """(catalogs this transaction's counters show written, those of ``suspects`` that the
    counters missed but hold a row version of this transaction)."""
    cur.execute(_WRITTEN_QUERY, (ALL_CATALOGS,))
    counted = {name for (name,) in cur.fetchall()}
    unseen = sorted(suspects - counted)
    if not unseen:
        return counted, set()
    # Only the catalogs this role may read (pg_authid is the superuser's, and only a
    # superuser, or a role granted SET on it, can switch track_counts off).
    cur.execute(
        "SELECT c FROM unnest(%s::text[]) c WHERE pg_catalog.has_table_privilege('pg_catalog.' || c, 'SELECT')",
        (unseen,),
    )
    readable = [name for (name,) in cur.fetchall()]
    if not readable:
        return counted, set()
    cur.execute(_xmin_query(readable))
    return counted, {name for (name,) in cur.fetchall()}


def attribute(cur: Any, changes: list[DiffEntry], transactional: bool) -> dict[str, list[str]]:
    """For each changed global object: [OWN | ELSEWHERE | STRICT, why], read in the run's
    transaction after its statements (nothing is read when no global object changed)."""
    changed = [(c, catalogs_of(c.id, c.kind)) for c in changes if is_global(c.kind, c.schema_)]
    if not changed:
        return {}
    if not transactional:
        why = "a transactional: false run commits statement by statement, so who changed it cannot be told"
        return {c.id: [STRICT, why] for c, _ in changed}
    suspects = set().union(*(cats for _, cats in changed if cats is not None))
    counted, unseen = _written(cur, suspects)
    out: dict[str, list[str]] = {}
    for c, cats in changed:
        if cats is None:
            why = (
                "replication slots are neither transactional nor in a catalog, so who changed them cannot be told"
                if c.kind == "cluster"
                else f"no catalog is known for {c.kind} objects, so who changed it cannot be told"
            )
            out[c.id] = [STRICT, why]
        elif cats & counted:
            out[c.id] = [OWN, f"this run's transaction wrote {', '.join(sorted(cats & counted))}"]
        elif cats & unseen:
            out[c.id] = [
                OWN,
                f"{', '.join(sorted(cats & unseen))} hold(s) rows this run's transaction wrote, "
                "which the write counters did not see",
            ]
        else:
            out[c.id] = [ELSEWHERE, f"this run's transaction wrote none of {', '.join(sorted(cats))}"]
    return out


def global_finding(c: DiffEntry, facts: dict[str, Any]) -> Finding:
    """The gate's finding for a changed global object, from the run's attribution (facts)."""
    verdict, why = (facts.get(FACT) or {}).get(c.id, [STRICT, "no attribution was made"])
    if verdict == ELSEWHERE:
        return Finding(
            code="global_object_changed_elsewhere",
            tier="informational",
            object=c.id,
            message=f"{c.kind} {c.change} by another session during the run ({why}); not judged",
        )
    return Finding(
        code="cluster_object_changed",
        tier="hard_fail",
        object=c.id,
        message=f"{c.kind} {c.change}: database- and cluster-level objects are outside any scope ({why})",
    )


def rollback_findings(cur: Any, changes: list[DiffEntry], transactional: bool) -> list[Finding]:
    """Hard fails that forbid committing a rollback: a global object its script changed
    (judged as ``attribute`` does: strictly for a non-transactional run)."""
    verdicts = attribute(cur, changes, transactional)
    return [
        Finding(
            code="cluster_object_changed",
            tier="hard_fail",
            object=c.id,
            message=f"{c.kind} {c.change} during the rollback: database- and cluster-level objects are outside "
            f"any scope ({verdicts[c.id][1]})",
        )
        for c in changes
        if c.id in verdicts and verdicts[c.id][0] != ELSEWHERE
    ]
