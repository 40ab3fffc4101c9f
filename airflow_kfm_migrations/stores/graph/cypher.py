"""Static reading of Cypher scripts: split into statements, classify, find labels and types.

No Cypher parser is involved: a small scanner understands strings ('…', "…" with
backslash escapes), backtick identifiers (`` `a``b` ``), ``//`` and ``/* */`` comments, and
splits on the semicolons outside them. Label and relationship-type mentions are read
from the masked text (strings and comments blanked), so a label hidden in a string or
built dynamically never shows up here: the observed diff decides for those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_kfm_migrations.errors import InputError


@dataclass(frozen=True)
class CypherStatement:
    text: str  # the statement as written (comments kept), without the trailing ';'
    masked: str  # same length; strings replaced by '_' runs, comments by spaces
    line: int  # 1-based line where the statement starts

    @property
    def kind(self) -> str:
        return classify(self.masked)[0]


def split_cypher(text: str, file: str = "<cypher>") -> list[CypherStatement]:
    """Statements of a script. Unterminated strings/comments are an input error."""
    out: list[CypherStatement] = []
    buf: list[str] = []
    mask: list[str] = []
    i, n = 0, len(text)
    line = 1
    start_line = 1

    def flush() -> None:
        raw = "".join(buf)
        masked = "".join(mask)
        if masked.strip():
            lead = len(raw) - len(raw.lstrip())
            trail = len(raw.rstrip())
            out.append(CypherStatement(raw[lead:trail], masked[lead:trail], start_line))
        buf.clear()
        mask.clear()

    while i < n:
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise InputError(_at(file, text, i), "-", "unterminated string literal")
            seg = text[i : j + 1]
            buf.append(seg)
            mask.append(c + "".join("\n" if ch == "\n" else "_" for ch in seg[1:-1]) + c)
            line += seg.count("\n")
            i = j + 1
        elif c == "`":
            j = i + 1
            while True:
                if j >= n:
                    raise InputError(_at(file, text, i), "-", "unterminated backtick identifier")
                if text[j] == "`":
                    if j + 1 < n and text[j + 1] == "`":
                        j += 2
                        continue
                    break
                j += 1
            seg = text[i : j + 1]
            buf.append(seg)
            mask.append(seg)  # identifiers stay visible: they may be labels
            line += seg.count("\n")
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            mask.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise InputError(_at(file, text, i), "-", "unterminated block comment")
            seg = text[i : j + 2]
            buf.append(seg)
            mask.append("".join("\n" if ch == "\n" else " " for ch in seg))
            line += seg.count("\n")
            i = j + 2
        elif c == ";":
            flush()
            i += 1
            start_line = line
        else:
            if not "".join(mask).strip() and not c.isspace():
                start_line = line
            buf.append(c)
            mask.append(c)
            if c == "\n":
                line += 1
            i += 1
    flush()
    return out


def _at(file: str, text: str, i: int) -> str:
    """``file:line:column`` of the character at index ``i`` (1-based line and column)."""
    line = text.count("\n", 0, i) + 1
    return f"{file}:{line}:{i - (text.rfind(chr(10), 0, i) + 1) + 1}"


_SCHEMA = re.compile(
    r"^\s*(CREATE(\s+OR\s+REPLACE)?\s+((RANGE|TEXT|POINT|LOOKUP|FULLTEXT|VECTOR|BTREE)\s+)?(CONSTRAINT|INDEX)"
    r"|DROP\s+(CONSTRAINT|INDEX))\b",
    re.I,
)
_ADMIN = re.compile(
    r"^\s*((CREATE|DROP|ALTER|START|STOP)\s+(OR\s+REPLACE\s+)?(COMPOSITE\s+)?(DATABASE|ALIAS|USER|ROLE|SERVER)"
    r"|GRANT|DENY|REVOKE|ENABLE\s+SERVER|DEALLOCATE|REALLOCATE|RENAME\s+(USER|ROLE|SERVER))\b",
    re.I,
)
_USE = re.compile(r"^\s*USE\b", re.I)
_WRITE = re.compile(r"\b(CREATE|MERGE|SET|DELETE|REMOVE|FOREACH|LOAD\s+CSV)\b", re.I)
_CALL_PROC = re.compile(r"\bCALL\s+[A-Za-z_][\w.]*\s*\(", re.I)
_IN_TX = re.compile(r"\bIN\s+(\d+\s+)?(CONCURRENT\s+)?TRANSACTIONS\b", re.I)
_SCHEMA_NAME = re.compile(
    r"^\s*(?:CREATE|DROP)\s+(?:OR\s+REPLACE\s+)?(?:\w+\s+)?(?:CONSTRAINT|INDEX)\s+(?!IF\b|FOR\b|ON\b)(`(?:[^`]|``)+`|\w+)",
    re.I,
)


def classify(masked: str) -> tuple[str, str]:
    """(kind, statement name): kind is schema | data | admin | other."""
    if _ADMIN.match(masked):
        return "admin", "admin_command"
    m = _SCHEMA.match(masked)
    if m:
        verb = "drop" if m.group(0).strip().upper().startswith("DROP") else "create"
        what = (m.group(5) or m.group(6) or "").lower()
        return "schema", f"{verb}_{what}"
    if _WRITE.search(masked):
        return "data", "write"
    if _CALL_PROC.search(masked):
        return "other", "procedure_call"
    return "other", "read"


_NAME = r"(?:`(?:[^`]|``)+`|[A-Za-z_]\w*)"
_NAMES = rf"({_NAME}(?:\s*\|\s*:?\s*{_NAME})*)"
# ``FOR (n:Label)``, ``FOR (n: A|B)`` and ``FOR ()-[r:TYPE]-()`` of CREATE CONSTRAINT/INDEX,
# spaces allowed wherever the server allows them (``IS`` is not accepted there).
_SCHEMA_NODE = re.compile(rf"\bFOR\s*\(\s*(?:{_NAME}\s*)?:\s*{_NAMES}\s*\)", re.I)
_SCHEMA_REL = re.compile(rf"\bFOR\s*\(\s*\)\s*<?\s*-\s*\[\s*(?:{_NAME}\s*)?:\s*{_NAMES}\s*\]\s*-\s*>?\s*\(\s*\)", re.I)


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


def schema_targets(masked: str) -> tuple[str, list[str]] | None:
    """(``node`` | ``relationship``, labels or types) that a CREATE CONSTRAINT/INDEX statement
    is for, read from its ``FOR`` pattern; None when there is none to read (a token lookup
    index, ``FOR (n)``, is for every label; a DROP names only the object)."""
    for entity, rx in (("relationship", _SCHEMA_REL), ("node", _SCHEMA_NODE)):
        m = rx.search(masked)
        if m:
            names = [_unquote(x) for x in re.findall(_NAME, m.group(1))]
            return entity, names
    return None


def schema_name(masked: str) -> str | None:
    m = _SCHEMA_NAME.match(masked)
    if not m:
        return None
    name = m.group(1)
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


_IDENT = re.compile(r"`((?:[^`]|``)+)`|([A-Za-z_][\w]*)")


def mentions(masked: str) -> tuple[set[str], set[str], bool]:
    """(labels, relationship types, dynamic) mentioned with ``:Name`` syntax outside strings.

    A colon counts when it follows a variable, ``(``, ``[`` or another label, and not
    when it is a map key's colon (``{key: value}``). Inside a ``-[ … ]-`` pattern the
    names are relationship types. ``dynamic`` is set for ``:$(…)`` labels.
    """
    labels: set[str] = set()
    types: set[str] = set()
    dynamic = False
    stack: list[str] = []  # '(' | '{' | 'rel' | '['
    i, n = 0, len(masked)
    prev_sig = ""  # last non-space char before the current position
    while i < n:
        c = masked[i]
        if c == "`":
            j = masked.find("`", i + 1)
            while j >= 0 and j + 1 < n and masked[j + 1] == "`":
                j = masked.find("`", j + 2)
            i = n if j < 0 else j + 1
            prev_sig = "`"
            continue
        if c in "'\"":
            j = masked.find(c, i + 1)
            i = n if j < 0 else j + 1
            prev_sig = c
            continue
        if c in "([{":
            if c == "[":
                stack.append("rel" if prev_sig == "-" else "[")
            else:
                stack.append(c)
        elif c in ")]}":
            if stack:
                stack.pop()
        elif c == ":" and i + 1 < n and not masked[i + 1].isspace():
            top = stack[-1] if stack else ""
            if top == "{" and _is_map_key(masked, i):
                pass
            elif masked[i + 1] == "$":
                dynamic = True
            elif (prev_sig and (prev_sig.isalnum() or prev_sig in "_([`:|&!)")) or top in ("(", "rel"):
                names, i = _label_expression(masked, i + 1)
                (types if top == "rel" else labels).update(names)
                prev_sig = "x"
                continue
        if not c.isspace():
            prev_sig = c
        i += 1
    return labels, types, dynamic


def _is_map_key(masked: str, colon: int) -> bool:
    j = colon - 1
    while j >= 0 and masked[j].isspace():
        j -= 1
    if j >= 0 and masked[j] == "`":
        j = masked.rfind("`", 0, j) - 1
    else:
        while j >= 0 and (masked[j].isalnum() or masked[j] == "_"):
            j -= 1
    while j >= 0 and masked[j].isspace():
        j -= 1
    return j >= 0 and masked[j] in "{,"


def _label_expression(masked: str, i: int) -> tuple[list[str], int]:
    names: list[str] = []
    n = len(masked)
    while i < n:
        while i < n and masked[i] in "!(":
            i += 1
        m = _IDENT.match(masked, i)
        if not m:
            break
        names.append(m.group(1).replace("``", "`") if m.group(1) is not None else m.group(2))
        i = m.end()
        while i < n and masked[i] == ")":
            i += 1
        if i < n and masked[i] in "|&:":
            i += 1
            if i < n and masked[i] == ":":
                i += 1
            continue
        break
    return names, i


def in_transactions(masked: str) -> bool:
    return bool(_IN_TX.search(masked))


def uses_graph(masked: str) -> bool:
    return bool(_USE.match(masked))


# ----------------------------------------------------------------------- EXPLAIN preflight

_POSITION = re.compile(r"\(line (\d+), column (\d+) \(offset: \d+\)\)")


def explain_query(st: CypherStatement) -> str:
    """``EXPLAIN`` + the statement from its first significant character, so that line 1 of
    the server's error positions is ``st.line`` (leading comments are dropped). ``EXPLAIN``
    compiles only: it never executes, even in front of ``PROFILE`` or ``CYPHER`` options."""
    lead = len(st.masked) - len(st.masked.lstrip())
    return "EXPLAIN " + st.text[lead:]


def error_line(st: CypherStatement, message: str) -> tuple[int, str]:
    """(file line, message without the server's position) for an error of ``explain_query(st)``."""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else "error"
    m = _POSITION.search(message or "")
    line = st.line + max(int(m.group(1)) - 1, 0) if m else st.line
    return line, _POSITION.sub("", first).strip()


def plan_mentions(plan: dict | None) -> tuple[set[str], set[str]]:
    """(labels, relationship types) named in a server plan: the ``Details`` argument of every
    operator is Cypher-like text (``n:Label``, ``(a)-[r:TYPE]->(b)``, literals replaced by
    ``$autostring_0`` parameters), read with the same scanner as the scripts. Dynamic labels
    (``n:$(…)``) stay invisible here too; the observed diff decides for those."""
    labels: set[str] = set()
    types: set[str] = set()
    stack = [plan] if plan else []
    while stack:
        op = stack.pop()
        args = op.get("args") or op.get("arguments") or {}
        details = args.get("Details") if isinstance(args, dict) else None
        if isinstance(details, str) and ":" in details:
            found_labels, found_types, _ = mentions(details)
            labels |= found_labels
            types |= found_types
        stack.extend(op.get("children") or [])
    return labels, types


def plan_operators(plan: dict | None) -> list[tuple[str, str]]:
    """(operator type without its ``@neo4j`` suffix, ``Details`` text) of every operator of a
    server plan, parents before children."""
    out: list[tuple[str, str]] = []
    stack = [plan] if plan else []
    while stack:
        op = stack.pop()
        args = op.get("args") or op.get("arguments") or {}
        details = args.get("Details") if isinstance(args, dict) else None
        out.append((str(op.get("operatorType") or "").split("@")[0], details if isinstance(details, str) else ""))
        stack.extend(reversed(op.get("children") or []))
    return out


def quote(name: str) -> str:
    """``name`` as a backtick-quoted Cypher identifier (a label, a relationship type)."""
    return "`" + name.replace("`", "``") + "`"
