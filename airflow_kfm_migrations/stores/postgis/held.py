"""One connection for many runs (``PostgisStore.held``): ``migrate`` applies a series of
migrations, and ``status`` reads a series of baselines, over one connection instead of one
(or two) per run.

Inside ``held()``, whatever the store would connect for (a session, a ledger read, the
receipt digest, a backfill engine) borrows the held connection instead. Closing a borrowed
connection does not close it: when the outermost borrower lets go, the connection is left
as a new one would be. Its transaction is rolled back, and ``DISCARD ALL`` resets what a
migration's script may have set for the session (``SET search_path`` in a committed
transaction outlives it), drops temporary objects, releases advisory locks and prepared
statements (psycopg clears its own cache when it sees ``DISCARD ALL``). A connection that
broke (a killed backend) is replaced by a new one at the next borrow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import Any

Connect = Callable[[], Any]


class HeldConnection:
    """The connection a store lends while ``held()`` is open."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: Any = None
        self.lent = 0  # borrowers that have not let go yet
        self.connections = 0  # connections opened (1 unless one broke)

    def borrow(self) -> Borrowed:
        if self._conn is None or self._conn.closed or getattr(self._conn, "broken", False):
            if self._conn is not None:
                with suppress(Exception):  # broad: closing a connection that is already gone
                    self._conn.close()
            self._conn = self._connect()
            self.connections += 1
        self.lent += 1
        return Borrowed(self, self._conn)

    def give_back(self) -> None:
        self.lent -= 1
        if self.lent == 0:
            reset(self._conn)

    def close(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # broad: the server may have closed it already
                self._conn.close()
            self._conn = None


def reset(conn: Any) -> None:
    """Leave ``conn`` as a new connection would be; close it when that fails."""
    if conn is None or conn.closed:
        return
    try:
        if not conn.autocommit:
            conn.rollback()
        conn.autocommit = True
        conn.execute("DISCARD ALL")
        conn.autocommit = False
        conn.read_only = None
        conn.isolation_level = None
        conn.deferrable = None
    except Exception:  # broad: a connection in a state we cannot reset is not lent again
        with suppress(Exception):
            conn.close()


class Borrowed:
    """A borrowed connection: everything is the held connection's, except that closing it
    (or leaving its ``with`` block) gives it back instead of closing it."""

    __slots__ = ("_conn", "_done", "_lender")

    def __init__(self, lender: HeldConnection, conn: Any) -> None:
        object.__setattr__(self, "_lender", lender)
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_done", False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conn, name, value)

    def __enter__(self) -> Borrowed:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        # As psycopg's own exit: commit or roll back what the block left open; then give back.
        conn = self._conn
        if not conn.closed and not conn.autocommit:
            with suppress(Exception):  # broad: the connection may be gone
                if et is None:
                    conn.commit()
                else:
                    conn.rollback()
        self.close()

    def close(self) -> None:
        if not self._done:
            object.__setattr__(self, "_done", True)
            self._lender.give_back()
