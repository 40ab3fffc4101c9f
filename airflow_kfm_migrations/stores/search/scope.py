"""The declared scope of a search migration as name tests: which indices and aliases are
forbidden, protected or allowed (shell-style patterns, case-sensitive)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from airflow_kfm_migrations.contracts.models import SearchDeclaration


@dataclass(frozen=True)
class SearchScopeRules:
    decl: SearchDeclaration

    @staticmethod
    def _match(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def index_forbidden(self, name: str) -> bool:
        # Dot-indices (the governance index, .tasks, system indices) are invisible to the
        # baseline, so nothing may target them.
        return name.startswith(".") or self._match(name, self.decl.scope.forbidden_index_patterns)

    def index_protected(self, name: str) -> bool:
        return self._match(name, self.decl.scope.protected_indices)

    def index_guarded(self, name: str) -> bool:
        return self.index_forbidden(name) or self.index_protected(name)

    def index_allowed(self, name: str) -> bool:
        return self._match(name, self.decl.scope.allowed_index_patterns)

    def alias_forbidden(self, name: str) -> bool:
        return name.startswith(".") or self._match(name, self.decl.scope.forbidden_aliases)

    def alias_allowed(self, name: str) -> bool:
        return self._match(name, self.decl.scope.allowed_aliases)
