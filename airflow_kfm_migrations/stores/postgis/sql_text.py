"""A SQL script split into statements with pglast, each with where it is written, and parse
errors that name ``file:line:column``.

pglast reports a parse error's position as an index into the script, but converts it from
PostgreSQL's cursor position as if that were a byte offset, while PostgreSQL already counts
characters: after a multi-byte character the index falls short. :func:`error_offset` undoes
that and checks the result against the token the message names.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

import pglast

from airflow_kfm_migrations.errors import InputError


@dataclass(frozen=True)
class SqlStatement:
    text: str  # the statement as written, without the comments before it and the ';'
    stmt: Any  # pglast's parse node
    line: int  # 1-based line of its first character in the file
    column: int  # 1-based column there


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of the character at ``offset``."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _pglast_index(text: str) -> list[int]:
    """For every character index c, the index pglast reports for cursor position c + 1."""
    multibyte: list[tuple[int, int]] = []  # (byte offset, character index) of each byte of a multi-byte char
    ofs = 0
    for idx, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        if n > 1:
            multibyte += [(ofs + k, idx) for k in range(n)]
        ofs += n
    keys = [o for o, _ in multibyte]
    out = []
    for c in range(len(text) + 1):
        k = bisect.bisect_right(keys, c) - 1
        out.append(multibyte[k][1] + (c - multibyte[k][0]) if k >= 0 else c)
    return out


_NEAR = re.compile(r'at or near "(.*)"', re.S)


def error_offset(text: str, exc: Exception) -> int:
    """The character index a pglast ``ParseError`` points at (the end of the script for an
    error "at end of input")."""
    loc = exc.args[1] if len(exc.args) > 1 else None
    if not isinstance(loc, int):
        return len(text.rstrip())
    m = _NEAR.search(str(exc.args[0]))
    token = m.group(1) if m else ""
    if token and text.startswith(token, loc):
        return loc
    candidates = [c for c, reported in enumerate(_pglast_index(text)) if reported == loc]
    matching = [c for c in candidates if token and text.startswith(token, c)]
    return (matching or candidates or [loc])[0]


def split_sql(text: str, file: str) -> list[SqlStatement]:
    """The statements of a script, parsed; a script that does not parse is an input error
    ``file:line:column: statement N: SQL does not parse: ...``."""
    try:
        parsed = pglast.parse_sql(text)
        slices = list(pglast.split(text, only_slices=True))
    except pglast.parser.ParseError as exc:
        offset = error_offset(text, exc)
        line, col = line_column(text, offset)
        raise InputError(
            f"{file}:{line}:{col}", _statement_number(text, offset), f"SQL does not parse: {exc.args[0]}"
        ) from None
    if len(parsed) != len(slices):
        raise InputError(file, "-", "could not split the script into statements")
    out = []
    for sl, raw in zip(slices, parsed, strict=True):
        line, col = line_column(text, sl.start)
        out.append(SqlStatement(text[sl], raw.stmt, line, col))
    return out


def _statement_number(text: str, offset: int) -> str:
    """``statement N`` for the statement holding ``offset``, counted by the scanner's ``;``
    tokens (it reads scripts the parser refuses), or ``-`` when even the scanner fails."""
    try:
        tokens = list(pglast.parser.scan(text))
    except pglast.parser.ParseError:
        return "-"
    n, prev = 1, ";"
    for tok in tokens:
        if tok.start >= offset:
            break
        is_semicolon = tok.name == "ASCII_59"
        if is_semicolon and prev != ";":
            n += 1
        prev = ";" if is_semicolon else tok.name
    return f"statement {n}"
