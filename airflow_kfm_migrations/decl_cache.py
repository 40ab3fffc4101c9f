"""Parse-time cache of what the DAG factory derives from the registry and each declaration.

A DAG file with a thousand migrations would otherwise parse a thousand YAML declarations and
validate them and the registry with pydantic on every DagBag parse, although they rarely
change. The factory only needs a few facts from each declaration (intent, scope and limits
for ``doc_md``, change class, the runner's connection, whether a backfill is
declared) and a few fields of each registry entry. Those facts are kept in one JSON file per
bundles root, keyed by the sha256 of the bytes they were derived from. A parse that finds
everything in the cache does not even import pydantic or the contract models.

Trust rules:

- every parse reads the registry and each declaration (with the same size, UTF-8 and symlink
  checks as :func:`~airflow_kfm_migrations.declaration.bundle.load_declaration`) and hashes them; cached
  facts are used only when that hash matches, so an edited file is validated again at once;
- the whole file is ignored when it was written by different validation code (a
  fingerprint of the modules that parse and validate declarations) or is unreadable,
  malformed or of another format; it is then rebuilt;
- only valid files are cached: a broken one is parsed (and fails with its reason) every
  time, so a cache never hides or changes an error;
- writes are atomic (temporary file and rename) and best effort: a read-only or missing
  cache directory only costs speed.

``KFM_PARSE_CACHE`` sets the directory, or turns the cache off with ``off``. The default is
``$XDG_CACHE_HOME/airflow-kfm-migrations`` (``~/.cache/airflow-kfm-migrations``). Runs never
use it: tasks always load the whole bundle (``load_bundle``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, cast

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.util.cache import cache_dir

CACHE_FORMAT = "kfm-decl-facts.v2"
# bundle.DECLARATION_FILE and registry.MAX_REGISTRY_BYTES, without importing them (a test checks).
DECLARATION_FILE = "migration.yml"
REGISTRY_CAP = 16 * 1024 * 1024

# The modules whose code decides whether a file is valid and what the facts are.
_CODE = (
    "declaration/bundle.py",
    "util/safe_yaml.py",
    "declaration/registry.py",
    "contracts/__init__.py",
    "contracts/models.py",
    "contracts/types.py",
    "contracts/declarations.py",
    "contracts/records.py",
    "decl_cache.py",
    "errors.py",
    "config.py",
    "kinds.py",
)
_FACT_TYPES: dict[str, Any] = {
    "type": str,
    "intent": str,
    "scope_rows": list,
    "limit_rows": list,
    "change_class": str,
    "reviewers": list,
    "runner_conn_id": (str, type(None)),
    "backfill": bool,
}


@dataclass(frozen=True)
class EntryFacts:
    """The fields of a registry entry the DAG factory uses."""

    migration_id: str
    type: str
    path: str
    owner: str
    status: str
    conn_id: str | None
    schedule: str | None

    @classmethod
    def of(cls, entry: Any) -> EntryFacts:
        return cls(
            str(entry.migration_id),
            str(entry.type),
            str(entry.path),
            str(entry.owner),
            str(entry.status),
            entry.conn_id,
            entry.schedule,
        )


def _entry_from_json(row: Any) -> EntryFacts | None:
    if not isinstance(row, list) or len(row) != 7:
        return None
    if not all(isinstance(x, str) for x in row[:5]) or not all(x is None or isinstance(x, str) for x in row[5:]):
        return None
    return EntryFacts(*row)


def _read_plain(path: Path, cap: int) -> str | None:
    """The file's text when ``read_text_capped`` would return it too (a regular file, not a
    symlink, within the cap, strict UTF-8, no NUL); otherwise None, and the caller lets
    ``read_text_capped`` raise its error. This module imports nothing heavy for a warm parse."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
            return None
        with path.open("rb") as fh:
            data = fh.read(cap + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return None if len(data) > cap or "\x00" in text else text


def facts_of(decl: Any) -> dict[str, Any]:
    """The parse-time facts of a valid declaration, as plain JSON values."""
    scope = decl.scope.model_dump()
    return {
        "type": str(decl.type),
        "intent": str(decl.intent),
        "scope_rows": [[k, ", ".join(map(str, v)) if isinstance(v, list) else str(v)] for k, v in scope.items() if v],
        "limit_rows": [[k, str(v)] for k, v in decl.limits.model_dump().items()],
        "change_class": str(decl.approvals.change_class),
        "reviewers": [str(r) for r in decl.approvals.required_reviewers],
        "runner_conn_id": decl.runner.conn_id,
        "backfill": getattr(decl, "backfill", None) is not None,
    }


def _well_formed(facts: Any) -> bool:
    if not isinstance(facts, dict) or facts.keys() != _FACT_TYPES.keys():
        return False
    if not all(isinstance(facts[k], t) for k, t in _FACT_TYPES.items()):
        return False
    rows = facts["scope_rows"] + facts["limit_rows"]
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rows):
        return False
    return all(isinstance(x, str) for x in facts["reviewers"])


@functools.cache
def code_fingerprint() -> str:
    """sha256 over the validation code and the pydantic version: a change invalidates the cache."""
    import pydantic

    h = hashlib.sha256(pydantic.VERSION.encode())
    here = Path(__file__).resolve().parent
    for rel in _CODE:
        h.update(rel.encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update((here / rel).read_bytes())
    return h.hexdigest()


class DeclarationFacts:
    """Facts of the declarations under one bundles root, read through the cache.

    Use :meth:`get` for each bundle folder, then :meth:`save` once: the file written holds
    exactly the declarations seen in this parse."""

    def __init__(self, bundles_root: Path, directory: Path | None = None, *, enabled: bool = True) -> None:
        self.hits = 0
        self.misses = 0
        folder = (directory or cache_dir()) if enabled else None
        root_key = hashlib.sha256(str(Path(bundles_root).resolve()).encode()).hexdigest()[:24]
        self.path = folder / f"decl-facts-{root_key}.json" if folder else None
        doc = self._read() if self.path else {}
        self._old: dict[str, Any] = doc.get("entries", {})
        self._old_registry: Any = doc.get("registry")
        self._new: dict[str, dict[str, Any]] = {}
        self._new_registry: Any = None
        self._max_bytes: int | None = None

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(doc, dict)
            or doc.get("format") != CACHE_FORMAT
            or doc.get("code") != code_fingerprint()
            or not isinstance(doc.get("entries"), dict)
        ):
            return {}
        return doc

    def registry(self, path: Path) -> list[EntryFacts]:
        """The registry's entries; raises as ``registry.load_registry`` does."""
        text = _read_plain(path, REGISTRY_CAP)
        key = hashlib.sha256(text.encode()).hexdigest() if text is not None else None
        old = self._old_registry
        if key is not None and self.path is not None and isinstance(old, dict) and old.get("sha256") == key:
            rows = old.get("entries")
            entries = [_entry_from_json(r) for r in rows] if isinstance(rows, list) else [None]
            if all(e is not None for e in entries):
                self._new_registry = old
                self.hits += 1
                return cast(list[EntryFacts], entries)
        from airflow_kfm_migrations.declaration.registry import MAX_REGISTRY_BYTES, load_registry

        out = [EntryFacts.of(e) for e in load_registry(path).migrations]
        self.misses += 1
        # Cached only if the file did not change while it was validated.
        again = _read_plain(path, MAX_REGISTRY_BYTES)
        if key is not None and again is not None and hashlib.sha256(again.encode()).hexdigest() == key:
            self._new_registry = {"sha256": key, "entries": [list(astuple(e)) for e in out]}
        return out

    def get(self, folder: Path) -> dict[str, Any]:
        """The facts of ``folder``'s declaration; raises as ``load_declaration`` does."""
        decl_path = Path(folder) / DECLARATION_FILE
        if self._max_bytes is None:  # the cap the bundle loader applies
            self._max_bytes = settings().max_declaration_bytes
        text = _read_plain(decl_path, self._max_bytes)
        if text is None:  # let the bundle loader say what is wrong (or read it after all)
            from airflow_kfm_migrations.declaration.bundle import Limits, read_text_capped
            from airflow_kfm_migrations.errors import InputError, InvalidInput

            try:
                text = read_text_capped(decl_path, Limits().max_declaration_bytes)
            except InputError as exc:
                raise InvalidInput([exc]) from None
        key = hashlib.sha256(text.encode()).hexdigest()
        seen = self._new.get(key)
        if seen is not None:
            return seen
        cached = self._old.get(key)
        facts: dict[str, Any]
        if self.path is not None and _well_formed(cached):
            facts = cast(dict[str, Any], cached)
            self.hits += 1
        else:
            from airflow_kfm_migrations.declaration.bundle import display, parse_declaration

            facts = facts_of(parse_declaration(text, display(decl_path))[0])
            self.misses += 1
        self._new[key] = facts
        return facts

    def save(self) -> None:
        """Write the facts seen in this parse, if they differ from the file; never raises."""
        if self.path is None or (self._new == self._old and self._new_registry == self._old_registry):
            return
        doc = {"format": CACHE_FORMAT, "code": code_fingerprint(), "entries": self._new, "registry": self._new_registry}
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".decl-facts-", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
