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
    """A call to a store's server failed; ``line()`` names the call and the server's reason
    without any connection detail (exit 1)."""

    def line(self) -> str:
        return str(self)
