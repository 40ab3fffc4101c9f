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


# -- per-database identity --------------------------------------------------------------
#
# OIDs of objects made after initdb (by a user or an extension) are handed out by a
# cluster-wide counter: the same migration history gives them other values in another
# database, or in a database built at another time. A digest holds none of them, so that the
# same schema digests the same everywhere; where a catalog keeps such an OID, the digest
# holds the object's name instead. Built-in OIDs are the same in every database of a server
# version and stay as they are, so objects that refer to built-in objects only keep the
# digests they had.

FIRST_USER_OID = 16384
_USER_OID = "(1[6-9][0-9]{3}|[2-9][0-9]{4}|[1-9][0-9]{5,})"  # a decimal number from 16384 up
# reg* types store an OID and render it as a name: a constant of one holds an object's OID.
_REG_TYPES = (
    "24|1008|2202|2203|2204|2205|2206|2207|2208|2209|2210|2211|3734|3735|3769|3770|4089|4090|4096|4097|4191|4192"
)


def tree_has_user_oid(tree: str) -> str:
    """SQL: the stored expression tree ``tree`` names an object by an OID that differs from
    one database to the next: a field (other than a parse location) holding a number from
    16384 up (a user's or an extension's type, function, operator, collation or enum type;
    typmods of that size match too, which only costs a deparse), or a reg* constant."""
    return (
        f"({tree}::text ~ ':(?!location )[A-Za-z_]+ {_USER_OID}\\M' OR {tree}::text ~ ':consttype ({_REG_TYPES})\\M')"
    )


def tree_may_have_user_oid(tree: str) -> str:
    """SQL: false when ``tree`` cannot pass ``tree_has_user_oid`` (no number of five digits,
    no constant of a type numbered like the reg* types): a regular expression without
    lookahead, a fraction of the exact test's cost."""
    return f"({tree}::text ~ '[0-9]{{5}}|:consttype (24|1008|22[01][0-9]|37[0-9][0-9]|4[01][0-9][0-9]) ')"


def vector_has_user_oid(vector: str) -> str:
    """SQL: the oidvector or oid[] ``vector`` holds an OID from 16384 up."""
    return f"({vector}::text ~ '\\m{_USER_OID}\\M')"


def oid_names(vector: str, catalog: str, name: str, namespace: str) -> str:
    """SQL: the objects of ``catalog`` an oidvector or oid[] names, as ``schema.name`` in the
    vector's order (0, no object, stays 0)."""
    return (
        f"(SELECT string_agg(COALESCE((SELECT o.{namespace}::regnamespace::text || '.' || o.{name} "
        f"FROM pg_catalog.{catalog} o WHERE o.oid = u.v), u.v::text), ' ' ORDER BY u.i) "
        f"FROM unnest({vector}::oid[]) WITH ORDINALITY u(v, i))"
    )


def role_names(roles: str) -> str:
    """SQL: an oid[] of roles (0 is PUBLIC) as their sorted names."""
    return (
        f"(SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END ORDER BY 1) "
        f"FROM unnest({roles}) r)::text"
    )
