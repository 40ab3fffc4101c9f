"""Action files: the strict JSON format of a search migration's forward and rollback
(``{"actions": [...]}``), parsed and validated before anything runs, and what an action
may do to an index that already exists (:func:`additive_problem`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from airflow_kfm_migrations.declaration.bundle import Artifact, display
from airflow_kfm_migrations.errors import InputError

ACTION_FIELDS: dict[str, tuple[set[str], set[str]]] = {  # action -> (required, optional)
    "create_index": ({"index"}, {"settings", "mappings"}),
    "put_mapping": ({"index", "mappings"}, set()),
    "put_settings": ({"index", "settings"}, set()),
    "reindex": ({"source", "dest"}, {"query", "script", "slices", "requests_per_second"}),
    "aliases": ({"actions"}, set()),
    "delete_index": ({"index"}, set()),
}
SCRIPT_FIELDS = {"source", "lang", "params"}
# Lowercase, no wildcards, commas, spaces or path characters; may start with '.', so that
# the plan (not the parser) names a dot-index as forbidden.
NAME_RX = re.compile(r"^[a-z0-9.][a-z0-9._+\-]{0,254}$")


@dataclass(frozen=True)
class Action:
    file: str  # display path of the action file
    pos: int  # 1-based position in that file
    name: str  # action kind
    body: dict[str, Any]
    line: int = 0  # 1-based line of the action's object in its file (0: unknown)

    @property
    def where(self) -> str:
        return f"actions[{self.pos - 1}].{self.name}"

    def alias_ops(self) -> list[tuple[str, str, str]]:
        """(add|remove, index, alias) of an ``aliases`` action."""
        out = []
        for a in self.body.get("actions", []):
            ((op, spec),) = a.items()
            out.append((op, spec["index"], spec["alias"]))
        return out

    def targets(self) -> tuple[list[str], list[str]]:
        """(indices, aliases) the action names."""
        b = self.body
        if self.name == "reindex":
            return [b["source"], b["dest"]], []
        if self.name == "aliases":
            ops = self.alias_ops()
            return sorted({i for _, i, _ in ops}), sorted({a for _, _, a in ops})
        return [b["index"]], []


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _name(file: str, where: str, value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RX.match(value) or value in {".", ".."}:
        raise InputError(
            file, where, f"{what} must be one concrete lowercase name (no wildcards, commas or spaces), got {value!r}"
        )
    return value


def _obj(file: str, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(file, where, "must be a JSON object")
    return value


def parse_actions(text: str, file: str) -> list[Action]:
    """Parse and strictly validate one action file (``{"actions": [...]}``)."""
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}:{exc.lineno}:{exc.colno}", "-", f"invalid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise InputError(file, "-", f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(file, "-", 'must be an object {"actions": [...]}')
    lines = action_lines(text)
    extra = sorted(set(doc) - {"actions"})
    if extra:
        raise InputError(file, extra[0], "unknown field (only 'actions' is allowed)")
    actions = doc.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InputError(file, "actions", "must be a non-empty list")
    out: list[Action] = []
    for i, raw in enumerate(actions, 1):
        where = f"actions[{i - 1}]"
        if not isinstance(raw, dict) or len(raw) != 1:
            raise InputError(file, where, "each action is an object with exactly one key (the action kind)")
        ((name, body),) = raw.items()
        if name not in ACTION_FIELDS:
            raise InputError(file, f"{where}.{name}", f"unknown action (allowed: {', '.join(sorted(ACTION_FIELDS))})")
        where = f"{where}.{name}"
        body = _obj(file, where, body)
        required, optional = ACTION_FIELDS[name]
        unknown = sorted(set(body) - required - optional)
        if unknown:
            raise InputError(file, f"{where}.{unknown[0]}", "unknown field")
        missing = sorted(required - set(body))
        if missing:
            raise InputError(file, f"{where}.{missing[0]}", "required field is missing")
        _check_action(file, where, name, body)
        out.append(Action(file, i, name, body, lines[i - 1] if i <= len(lines) else 0))
    return out


def action_lines(text: str) -> list[int]:
    """The 1-based line where each element of the top-level ``actions`` list starts (the
    document has no other top-level key once parsed), read by a scan of the JSON text:
    strings skipped, depth counted."""
    out: list[int] = []
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c in "[{":
            if depth == 2:
                out.append(line)
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "\n":
            line += 1
        elif depth == 2 and not c.isspace() and c != ",":
            out.append(line)  # a scalar element: refused later, but keep the count aligned
            while i + 1 < n and text[i + 1] not in ",]\n":
                i += 1
        i += 1
    return out


def _check_action(file: str, where: str, name: str, b: dict[str, Any]) -> None:
    if "index" in b:
        _name(file, f"{where}.index", b["index"], "index")
    for key in ("settings", "mappings"):
        if key in b:
            _obj(file, f"{where}.{key}", b[key])
    if name == "create_index" and "aliases" in b.get("settings", {}):
        raise InputError(file, f"{where}.settings.aliases", "aliases are set by an 'aliases' action only")
    if name == "put_mapping":
        keys = set(b["mappings"])
        if keys != {"properties"} or not isinstance(b["mappings"]["properties"], dict):
            raise InputError(
                file, f"{where}.mappings", 'put_mapping is additive only: give exactly {"properties": {...}}'
            )
    if name == "put_settings" and not b["settings"]:
        raise InputError(file, f"{where}.settings", "must not be empty")
    if name == "reindex":
        _name(file, f"{where}.source", b["source"], "source")
        _name(file, f"{where}.dest", b["dest"], "dest")
        if b["source"] == b["dest"]:
            raise InputError(file, f"{where}.dest", "must differ from source")
        if "query" in b:
            _obj(file, f"{where}.query", b["query"])
        if "script" in b:
            s = _obj(file, f"{where}.script", b["script"])
            unknown = sorted(set(s) - SCRIPT_FIELDS)
            if unknown:
                raise InputError(file, f"{where}.script.{unknown[0]}", "unknown field")
            if not isinstance(s.get("source"), str) or not s["source"].strip():
                raise InputError(file, f"{where}.script.source", "must be a non-empty string")
            if "lang" in s and s["lang"] != "painless":
                raise InputError(file, f"{where}.script.lang", "only 'painless' is allowed")
            if "params" in s:
                _obj(file, f"{where}.script.params", s["params"])
        if "slices" in b:
            v = b["slices"]
            if not (v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024)):
                raise InputError(file, f"{where}.slices", "must be 'auto' or an integer from 1 to 1024")
        if "requests_per_second" in b:
            v = b["requests_per_second"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 or v == -1):
                raise InputError(file, f"{where}.requests_per_second", "must be a positive number or -1")
    if name == "aliases":
        acts = b["actions"]
        if not isinstance(acts, list) or not acts:
            raise InputError(file, f"{where}.actions", "must be a non-empty list")
        for j, a in enumerate(acts):
            w = f"{where}.actions[{j}]"
            if not isinstance(a, dict) or len(a) != 1:
                raise InputError(file, w, 'each alias action is {"add"|"remove": {index, alias}}')
            ((op, spec),) = a.items()
            if op not in {"add", "remove"}:
                raise InputError(file, f"{w}.{op}", "unknown alias action (allowed: add, remove)")
            spec = _obj(file, f"{w}.{op}", spec)
            unknown = sorted(set(spec) - {"index", "alias"})
            if unknown:
                raise InputError(file, f"{w}.{op}.{unknown[0]}", "unknown field")
            for key in ("index", "alias"):
                if key not in spec:
                    raise InputError(file, f"{w}.{op}.{key}", "required field is missing")
                _name(file, f"{w}.{op}.{key}", spec[key], key)


def load_actions(artifacts: list[Artifact]) -> list[Action]:
    out: list[Action] = []
    for art in artifacts:
        if not art.rel.endswith(".json"):
            raise InputError(display(art.path), "-", "search action files are JSON (.json)")
        out.extend(parse_actions(art.text, display(art.path)))
    return out


def created_by(actions: list[Action]) -> list[str]:
    return [a.body["index"] for a in actions if a.name == "create_index"]


def additive_problem(current: dict[str, Any], new: dict[str, Any], path: str = "") -> str | None:
    """The first field where ``new`` (a ``properties`` map) would change, not just extend,
    ``current``: new fields and new sub-fields are additive; any other difference is not."""
    for field_name, spec in new.items():
        here = f"{path}{field_name}"
        old = current.get(field_name)
        if old is None:
            continue
        if not isinstance(spec, dict) or not isinstance(old, dict):
            return here
        old_type = old.get("type", "object" if "properties" in old else None)
        for key, value in spec.items():
            if key in {"properties", "fields"}:
                if not isinstance(value, dict):
                    return here
                problem = additive_problem(old.get(key) or {}, value, f"{here}.")
                if problem:
                    return problem
            elif key == "type":
                if value != old_type:
                    return here
            elif old.get(key) != value:
                return here
    return None
