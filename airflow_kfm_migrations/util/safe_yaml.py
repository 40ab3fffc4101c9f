"""A YAML loader that refuses what a declaration never needs.

Refused: anchors and aliases (so no billion-laughs expansion), duplicate keys (later
values silently win in PyYAML), non-string keys, custom tags, and multi-document
streams. Timestamps stay strings so that what is digested is what the author wrote.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from airflow_kfm_migrations.errors import InputError


class _Refused(yaml.YAMLError):
    def __init__(self, reason: str, node_or_event: Any | None = None) -> None:
        self.reason = reason
        self.mark = getattr(node_or_event, "start_mark", None)
        super().__init__(reason)


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader with the refusals above."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused("YAML aliases are not allowed", event)
        if getattr(event, "anchor", None) is not None:
            raise _Refused("YAML anchors are not allowed", event)
        return super().compose_node(parent, index)  # type: ignore[no-any-return]

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        return _strict_mapping(self, node, deep)


def _strict_mapping(loader: Any, node: Node, deep: bool) -> dict[Any, Any]:
    """Mapping construction that refuses merge keys, non-string keys and duplicates."""
    if not isinstance(node, MappingNode):
        raise _Refused("expected a mapping", node)
    seen: set[str] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise _Refused("YAML merge keys are not allowed", key_node)
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise _Refused(f"mapping keys must be strings, got {type(key).__name__} {key!r}", key_node)
        if key in seen:
            raise _Refused(f"duplicate key {key!r}", key_node)
        seen.add(key)
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


# Keep timestamps as the strings the author wrote.
_RESOLVERS = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictSafeLoader.yaml_implicit_resolvers = _RESOLVERS

_FAST = bool(getattr(yaml, "__with_libyaml__", False))

if _FAST:

    class _StrictCSafeLoader(yaml.CSafeLoader):  # type: ignore[misc,name-defined]
        """libyaml parses; the same key rules apply in Python. Used only for text without
        '&' or '*', so no anchor or alias can be present (the strict path handles those)."""

        def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
            return _strict_mapping(self, node, deep)

    _StrictCSafeLoader.yaml_implicit_resolvers = _RESOLVERS


def load_yaml_text(text: str, file: str) -> Any:
    """Parse one YAML document; every failure becomes an InputError naming ``file``."""
    try:
        # libyaml is ~20x faster (DAG files parse many declarations); text that could hold
        # an anchor or alias goes through the pure-Python loader that refuses them by event.
        fast = _FAST and "&" not in text and "*" not in text
        loader = _StrictCSafeLoader(text) if fast else StrictSafeLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:
        raise InputError(file, _where(exc.mark), exc.reason) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.context == "expected a single document in the stream":
            reason = "expected a single document, found another one"
        raise InputError(file, _where(mark), f"invalid YAML: {reason}") from None
    except yaml.YAMLError as exc:
        raise InputError(file, "-", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise InputError(file, "-", "invalid YAML: nested too deeply") from None


def _where(mark: Any) -> str:
    if mark is None:
        return "-"
    return f"line {mark.line + 1}"
