"""The declared scope of a graph migration: which labels and relationship types it may
change, which are protected (changes need an approval) and which are forbidden.

Names are matched as ``fnmatch`` patterns, case-sensitively. The governance labels are
always forbidden.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from airflow_kfm_migrations.contracts.models import BaselineObject, GraphDeclaration
from airflow_kfm_migrations.stores.graph.governance import GOVERNANCE_LABELS


def _match(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class GraphScope:
    decl: GraphDeclaration

    def forbidden_label(self, label: str) -> bool:
        return label in GOVERNANCE_LABELS or _match(label, self.decl.scope.forbidden_labels)

    def protected_label(self, label: str) -> bool:
        return _match(label, self.decl.scope.protected_labels)

    def allowed_label(self, label: str) -> bool:
        return _match(label, self.decl.scope.allowed_labels)

    def forbidden_type(self, rel_type: str) -> bool:
        return _match(rel_type, self.decl.scope.forbidden_relationship_types)

    def allowed_type(self, rel_type: str) -> bool:
        return _match(rel_type, self.decl.scope.allowed_relationship_types)

    def guarded(self, entity: str, name: str) -> bool:
        if entity == "relationship":
            return self.forbidden_type(name)
        return self.forbidden_label(name) or self.protected_label(name)

    def allowed(self, entity: str, name: str) -> bool:
        if entity == "relationship":
            return self.allowed_type(name) and not self.forbidden_type(name)
        return self.allowed_label(name) and not self.forbidden_label(name)


def object_names(obj: BaselineObject) -> list[str]:
    """The labels (or the relationship type) a baseline object is about."""
    return [x for x in (obj.table or "").split("|") if x]
