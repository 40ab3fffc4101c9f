"""PostGIS scope rules: which schemas and tables a declaration allows, forbids or protects."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from airflow_kfm_migrations.contracts.models import PostgisDeclaration
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA


def _glob_rx(patterns: list[str]) -> re.Pattern[str] | None:
    """One compiled regex for a set of fnmatch globs (case-sensitive, as fnmatchcase)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class _Globs:
    """Schema globs, plus table globs that are either ``schema.table`` (matched against the
    qualified name) or bare (matched against the table name)."""

    def __init__(self, schemas: list[str], tables: list[str]) -> None:
        self.schemas = _glob_rx(schemas)
        self.qualified = _glob_rx([p for p in tables if "." in p])
        self.bare = _glob_rx([p for p in tables if "." not in p])

    def schema(self, schema: str) -> bool:
        return bool(self.schemas and self.schemas.match(schema))

    def table(self, schema: str, table: str) -> bool:
        return bool(
            (self.qualified and self.qualified.match(f"{schema}.{table}")) or (self.bare and self.bare.match(table))
        )

    def any(self, schema: str | None, table: str | None) -> bool:
        return bool(schema and (self.schema(schema) or (table and self.table(schema, table))))


def memo(
    test: Callable[[str | None, str | None], bool], seen: dict[tuple[str | None, str | None], bool]
) -> Callable[[str | None, str | None], bool]:
    """``test`` remembered per (schema, table) in ``seen``: 120k objects share 10k tables."""

    def memo(schema: str | None, table: str | None) -> bool:
        r = seen.get((schema, table))
        if r is None:
            r = seen[(schema, table)] = test(schema, table)
        return r

    return memo


def by_pair(
    objects: Sequence[Any], schema: str, table: str, test: Callable[[str | None, str | None], bool]
) -> Iterator[bool]:
    """``test(schema, table)`` for each object, asked once per distinct pair (120k objects
    share 10k tables) and looked up per object in C (``map``), not in a Python loop."""
    pairs = list(zip(map(attrgetter(schema), objects), map(attrgetter(table), objects), strict=True))
    ok = {p for p in set(pairs) if test(*p)}
    return map(ok.__contains__, pairs)


@dataclass(frozen=True)
class PgScope:
    decl: PostgisDeclaration

    @functools.cached_property
    def _forbidden(self) -> _Globs:
        return _Globs(self.decl.scope.forbidden_schemas, self.decl.scope.forbidden_tables)

    @functools.cached_property
    def _protected(self) -> _Globs:
        return _Globs(self.decl.scope.protected_schemas, self.decl.scope.protected_tables)

    @functools.cached_property
    def _allowed(self) -> _Globs:
        return _Globs(self.decl.scope.allowed_schemas, self.decl.scope.allowed_tables)

    def forbidden(self, schema: str | None, table: str | None) -> bool:
        return schema == LEDGER_SCHEMA or self._forbidden.any(schema, table)

    def protected(self, schema: str | None, table: str | None) -> bool:
        return self._protected.any(schema, table)

    def guarded(self, schema: str | None, table: str | None) -> bool:
        """Objects whose state must not change: protected or forbidden."""
        return self.protected(schema, table) or self.forbidden(schema, table)

    def allowed(self, schema: str | None, table: str | None) -> bool:
        a = self._allowed
        if not schema or not a.schema(schema):
            return False
        if table and self.decl.scope.allowed_tables:
            return a.table(schema, table)
        return True
