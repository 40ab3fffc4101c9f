"""Secret detection (detect-secrets plus our own DSN / private-key rules) and redaction.

Used at validate time on every file of a bundle, and on every artifact and message
the tool writes, so that no credential ever reaches a receipt, a log line or an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# scheme://user:password@host — a DSN that carries a password.
DSN_WITH_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@'\"]+:([^\s@/'\"]+)@[^\s'\"]+")
# key=value DSNs (libpq style) that carry a password.
KV_PASSWORD = re.compile(r"(?i)\bpassword\s*=\s*('[^']*'|\S+)")
PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]+ )?PRIVATE KEY( BLOCK)?-----")


@dataclass(frozen=True)
class SecretFinding:
    file: str
    line: int
    kind: str

    def message(self) -> str:
        return f"possible secret ({self.kind}) on line {self.line}; reference it by name instead"


def _own_rules(text: str, file: str) -> list[SecretFinding]:
    found = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if DSN_WITH_PASSWORD.search(line):
            found.append(SecretFinding(file, lineno, "DSN with password"))
        elif KV_PASSWORD.search(line):
            found.append(SecretFinding(file, lineno, "password in a key=value DSN"))
        if PRIVATE_KEY.search(line):
            found.append(SecretFinding(file, lineno, "private key"))
    return found


def scan_file(path: Path, label: str | None = None) -> list[SecretFinding]:
    """Scan one file; binary or non-UTF-8 files are scanned by detect-secrets only."""
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    label = label or str(path)
    found: list[SecretFinding] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        text = ""
    found.extend(_own_rules(text, label))
    with default_settings():
        collection = SecretsCollection()
        collection.scan_file(str(path))
        for filename in collection.files:
            for secret in collection[filename]:
                found.append(SecretFinding(label, secret.line_number or 0, secret.type))
    seen: set[tuple[int, str]] = set()
    unique = []
    for f in sorted(found, key=lambda f: (f.line, f.kind)):
        if (f.line, f.kind) not in seen:
            seen.add((f.line, f.kind))
            unique.append(f)
    return unique


def scan_text(text: str, label: str = "<text>") -> list[SecretFinding]:
    """Our own rules only (cheap); for strings the tool is about to write."""
    return _own_rules(text, label)


def redact(text: str) -> str:
    """Remove credentials from a message (e.g. a driver error that echoes a DSN)."""
    text = DSN_WITH_PASSWORD.sub(lambda m: m.group(0).replace(m.group(1), "***"), text)
    text = KV_PASSWORD.sub("password=***", text)
    return PRIVATE_KEY.sub("[private key]", text)
