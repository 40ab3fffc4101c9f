"""What a reindex script may touch. A painless reindex script gets the document as ``ctx``;
besides its ``_source`` and ``_id`` it can set ``ctx._index`` (send the document to another
index, e.g. overwrite a protected one), ``ctx._routing`` (another shard) and ``ctx.op``
(``delete`` or ``noop`` instead of indexing). The plan cannot follow what a script computes,
so the rule is about words, not meaning, and errs on the side of refusing:

    every occurrence of the word ``ctx`` in the script source (code, strings and comments
    alike) must be ``ctx._source`` or ``ctx._id`` (whitespace allowed around the dot).

So ``ctx['_index']``, ``ctx.put('_index', ...)``, ``ctx['_ind' + 'ex']``, ``def c = ctx``,
``ctx?._index``, ``ctx/**/._index`` and even reading ``ctx.op`` are all refused; a script
never needs them to transform a document. Painless has no other way to reach the context
(no reflection, no eval, identifiers are ASCII without escapes).
"""

from __future__ import annotations

import re

ALLOWED_CTX_FIELDS = ("_source", "_id")
_CTX = re.compile(r"(?<![A-Za-z0-9_$])ctx(?![A-Za-z0-9_$])")
_ALLOWED_AFTER = re.compile(r"\s*\.\s*(?:" + "|".join(ALLOWED_CTX_FIELDS) + r")(?![A-Za-z0-9_$])")
_REDIRECTS = ("_index", "_routing", "op")


def script_problem(source: str) -> str | None:
    """Why the reindex script ``source`` is refused, or None when every ``ctx`` it names is
    ``ctx._source`` or ``ctx._id``."""
    for m in _CTX.finditer(source):
        if _ALLOWED_AFTER.match(source, m.end()):
            continue
        shown = " ".join(source[m.start() : m.end() + 24].split())
        redirect = [w for w in _REDIRECTS if re.search(rf"\b{w}\b", source)]
        why = (
            f" (it mentions {', '.join(redirect)}: a script that sets ctx._index, ctx._routing or ctx.op can write "
            "into another index, shard or operation than the dest)"
            if redirect
            else ""
        )
        return (
            f"the script uses ctx other than ctx._source or ctx._id, at {shown!r}; a reindex script may only "
            f"read and change ctx._source and ctx._id{why}"
        )
    return None
