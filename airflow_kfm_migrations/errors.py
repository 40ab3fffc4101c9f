"""Typed errors. Each carries the exit code the CLI maps it to.

Exit codes (docs/architecture.md): 0 ok or no-op, 1 refused / failed closed, 2 bad usage or
unreadable/invalid input. User mistakes never surface as tracebacks: they are rendered
as one line ``file: field: reason``.
"""

from __future__ import annotations


class KfmError(Exception):
    exit_code = 1


class InputError(KfmError):
    """Bad input: unreadable, malformed or invalid files, or bad arguments (exit 2)."""

    exit_code = 2

    def __init__(self, file: str, field: str, reason: str) -> None:
        self.file = file
        self.field = field or "-"
        self.reason = " ".join(str(reason).split())
        super().__init__(self.line())

    def line(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


class PolicyError(InputError):
    """Well-formed input that the governance contract refuses (exit 1)."""

    exit_code = 1


class RefusedError(KfmError):
    """The tool understood the request and refuses it, fail-closed (exit 1)."""

    exit_code = 1

    def __init__(self, reason: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.reason = reason
        prefix = ""
        if file:
            prefix = f"{file}: " + (f"{field}: " if field else "")
        super().__init__(prefix + reason)


class LockedError(RefusedError):
    """Another run holds the migration lock."""


class AdminRefused(RefusedError):
    """A maintenance command refused (exit 1)."""


class VerifyMismatch(RefusedError):
    """A receipt, an artifact or the chain does not match its digests (exit 1)."""


class StoreCallError(RefusedError):
    """A failed call to a store's server, translated from whatever the client library raised.

    ``status`` is the HTTP status (0 when nothing answered); ``kind`` the server's error
    type; ``detail`` its message, which the caller has already redacted. Nothing here
    carries a host or a credential. Being a :class:`RefusedError`, a call failing where the
    session does not handle it ends the run as failed (with a receipt), and the session
    exit deletes what the run built (exit 1)."""

    def __init__(self, status: int, kind: str, detail: str, *, server: str = "search cluster") -> None:
        self.status = status
        self.kind = kind
        self.detail = " ".join(str(detail).split())[:500]
        super().__init__(f"{server} call failed: {self.line()}")

    def line(self) -> str:
        return f"{self.status or 'connection'} {self.kind}: {self.detail}"


class InvalidInput(KfmError):
    """One or more input problems, each rendered as its own ``file: field: reason`` line (exit 2)."""

    exit_code = 2

    def __init__(self, problems: list[InputError]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.line() for p in problems))


class BackfillStop(KfmError):
    """A governance stop of a backfill batch: the batch was rolled back and the migration
    must be compensated (exit 1). ``code`` is the finding code that stopped it."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class BackfillInterrupted(KfmError):
    """A backfill batch failed for a reason that is not governance (error, timeout, lost
    connection): committed progress is kept and a re-run resumes (exit 1)."""
