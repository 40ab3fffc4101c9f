"""The package's imports point one way (docs/architecture.md).

The import graph is built from the AST of every module, imports inside functions and
``TYPE_CHECKING`` blocks included (an import hidden in a function is still a dependency).
Three rules:

- a module imports only modules of its own layer or of layers below it;
- no import cycle, between any two modules;
- no module imports another module's ``_private`` name (or reads one as ``module._name``).

Store kinds are siblings: ``stores/postgis`` never imports ``stores/search`` and so on.
The checker's own tests at the bottom show each rule failing on a graph that breaks it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PKG = "airflow_kfm_migrations"
ROOT = Path(__file__).resolve().parent.parent / PKG

# Bottom to top. A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", (PKG, f"{PKG}.errors", f"{PKG}.config", f"{PKG}.kinds", f"{PKG}.stores")),
    ("util", (f"{PKG}.util",)),
    ("contracts", (f"{PKG}.contracts",)),
    ("declaration", (f"{PKG}.declaration",)),
    ("evidence", (f"{PKG}.evidence",)),
    ("store protocol", (f"{PKG}.stores.base",)),
    ("store kinds", (f"{PKG}.stores.postgis", f"{PKG}.stores.search", f"{PKG}.stores.graph")),
    ("engine", (f"{PKG}.engine",)),
    ("app", (f"{PKG}.app",)),
    ("shells", (f"{PKG}.cli", f"{PKG}.operators", f"{PKG}.dag_factory", f"{PKG}.decl_cache", f"{PKG}.task_group")),
]
KIND_PACKAGES = LAYERS[6][1]


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    names: tuple[str, ...]  # names taken from it (from-imports and module._attr reads)
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def edges_of(source: str, tree: ast.AST, known: set[str], is_package: bool = False) -> list[Edge]:
    """Every internal import of one module, wherever it stands."""
    out: list[Edge] = []
    aliases: dict[str, str] = {}  # local name -> internal module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."):
                    out.append(Edge(source, a.name, (), node.lineno))
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(source, is_package, node.level, node.module)
            if not (base == PKG or base.startswith(PKG + ".")):
                continue
            plain: list[str] = []
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # "from pkg import module"
                    out.append(Edge(source, sub, (), node.lineno))
                    aliases[a.asname or a.name] = sub
                else:
                    plain.append(a.name)
            if plain or not node.names:
                out.append(Edge(source, base, tuple(plain), node.lineno))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            out.append(Edge(source, aliases[node.value.id], (node.attr,), node.lineno))
    return out


def package_graph(root: Path = ROOT) -> dict[str, list[Edge]]:
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    graph: dict[str, list[Edge]] = {}
    for f in files:
        name = module_name(f, root)
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        graph[name] = edges_of(name, tree, known, is_package=f.name == "__init__.py")
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def kind_of(module: str) -> str | None:
    return next((p for p in KIND_PACKAGES if module == p or module.startswith(p + ".")), None)


def upward(graph: dict[str, list[Edge]]) -> list[str]:
    bad = []
    for src, edges in graph.items():
        for e in edges:
            s, t = layer_of(src), layer_of(e.target)
            if s < 0 or t < 0:
                bad.append(f"{src}:{e.line}: {e.target} belongs to no layer (add it to LAYERS)")
            elif t > s:
                bad.append(f"{src}:{e.line} ({LAYERS[s][0]}) imports {e.target} ({LAYERS[t][0]}): points up")
            elif kind_of(src) and kind_of(e.target) and kind_of(src) != kind_of(e.target):
                bad.append(f"{src}:{e.line} imports {e.target}: store kinds never import each other")
    return bad


def private_imports(graph: dict[str, list[Edge]]) -> list[str]:
    return [
        f"{src}:{e.line} takes {n} from {e.target}"
        for src, edges in graph.items()
        for e in edges
        if e.target != src
        for n in e.names
        if n.startswith("_") and not n.startswith("__")
    ]


def cycles(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or with a self-loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def module_edges(graph: dict[str, list[Edge]]) -> dict[str, set[str]]:
    return {src: {e.target for e in edges if e.target in graph and e.target != src} for src, edges in graph.items()}


# ------------------------------------------------------------------------ the package


def test_every_module_belongs_to_a_layer() -> None:
    missing = [m for m in package_graph() if layer_of(m) < 0]
    assert not missing, missing


def test_imports_point_down() -> None:
    bad = upward(package_graph())
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    found = cycles(module_edges(package_graph()))
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_no_private_names_across_modules() -> None:
    bad = private_imports(package_graph())
    assert not bad, "\n".join(bad)


def test_modules_stay_small() -> None:
    """About 700 lines at most: a module that grows past that holds more than one concern."""
    big = {
        module_name(f): n
        for f in ROOT.rglob("*.py")
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > 750
    }
    assert not big, big


def test_airflow_is_imported_only_by_the_shells() -> None:
    """The core imports without Airflow: only the operators, the DAG factory, the TaskGroup
    builder and the connection fallback (util/connections, inside a function) may import it."""
    allowed = (f"{PKG}.operators", f"{PKG}.dag_factory", f"{PKG}.task_group", f"{PKG}.util.connections", f"{PKG}.stores.")
    bad = []
    for f in ROOT.rglob("*.py"):
        name = module_name(f)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(m == "airflow" or m.startswith("airflow.") for m in mods) and not name.startswith(allowed):
                bad.append(f"{name}:{node.lineno}")
    assert not bad, bad


# ------------------------------------------------------------- the checker catches breaks


def _graph(sources: dict[str, str]) -> dict[str, list[Edge]]:
    known = set(sources)
    return {name: edges_of(name, ast.parse(text), known) for name, text in sources.items()}


def test_checker_reports_an_upward_import_even_inside_a_function() -> None:
    g = _graph(
        {
            f"{PKG}.declaration.policy": f"def f():\n    from {PKG}.engine.gate import verdict\n",
            f"{PKG}.engine.gate": "verdict = 1\n",
        }
    )
    bad = upward(g)
    assert len(bad) == 1 and "points up" in bad[0] and "declaration.policy:2" in bad[0]


def test_checker_reports_a_cycle_and_a_private_name() -> None:
    g = _graph(
        {
            f"{PKG}.engine.a": f"from {PKG}.engine.b import _helper\n",
            f"{PKG}.engine.b": f"def g():\n    from {PKG}.engine import a\n    return a._x\n",
        }
    )
    assert cycles(module_edges(g)) == [[f"{PKG}.engine.a", f"{PKG}.engine.b"]]
    assert sorted(private_imports(g)) == [
        f"{PKG}.engine.a:1 takes _helper from {PKG}.engine.b",
        f"{PKG}.engine.b:3 takes _x from {PKG}.engine.a",
    ]


def test_checker_reports_one_store_kind_importing_another() -> None:
    g = _graph(
        {
            f"{PKG}.stores.postgis.store": f"from {PKG}.stores.search.client import CallError\n",
            f"{PKG}.stores.search.client": "CallError = 1\n",
        }
    )
    assert upward(g) == [
        f"{PKG}.stores.postgis.store:1 imports {PKG}.stores.search.client: store kinds never import each other"
    ]
