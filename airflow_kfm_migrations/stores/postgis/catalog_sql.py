"""Building blocks of the catalog queries: which schemas are the user's, extension
membership, comments, expression trees, and the digest of a row of fields.

Digests are computed server-side (sha256 over the record text of the definition's fields), so
function bodies, defaults and view texts never leave the server: the baseline carries
digests and counts only. The governance schema that holds the ledger is excluded by name.
"""

from __future__ import annotations

LEDGER_SCHEMA = "kfm_governance"  # the ledger and the backfill progress; no capture sees it

# ``n`` (a pg_namespace row) is a user schema: not a system, temporary or governance one.
USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', '" + LEDGER_SCHEMA + "') "
    "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
)


# Extension members are read once per capture (a materialised CTE probed through a hashed
# NOT IN) rather than with one pg_depend lookup per object. Membership rows always point at an
# extension: saying so lets the index on the referenced object find them, instead of a scan of
# every dependency (200k+ rows for a 10,000-table database).
EXT_CTE = (
    "WITH ext AS MATERIALIZED (SELECT classid, objid FROM pg_catalog.pg_depend "
    "WHERE refclassid = 'pg_catalog.pg_extension'::regclass AND deptype = 'e') "
)


def not_ext(catalog: str, oid: str) -> str:
    """The object is no extension's member (needs ``EXT_CTE``)."""
    return f"{oid} NOT IN (SELECT objid FROM ext WHERE classid = '{catalog}'::regclass)"


def description(catalog: str, oid: str, sub: str = "0") -> str:
    """The comment on an object, as a scalar subquery (obj_description is an SQL function
    that is not inlined, and costs more than the join)."""
    return (
        f"(SELECT ds.description FROM pg_catalog.pg_description ds WHERE ds.objoid = {oid} "
        f"AND ds.classoid = '{catalog}'::regclass AND ds.objsubid = {sub})"
    )


def expr_tree(expr: str) -> str:
    """A stored expression tree without its parse locations (byte offsets into the SQL
    text that created it), so the same expression written differently digests the same.
    Used instead of deparsing (pg_get_expr and friends open the table's relcache entry,
    which dominates a 10,000-table capture)."""
    return f"regexp_replace({expr}::text, ' :location -?[0-9]+', '', 'g')"


def row_sha256(*exprs: str) -> str:
    """sha256 (hex) of the fields' record text: ``row(...)::text`` quotes every field that
    needs it and writes NULL as nothing, so distinct field lists give distinct texts."""
    return "encode(sha256(convert_to(row(" + ", ".join(exprs) + ")::text, 'UTF8')), 'hex')"


def qident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
