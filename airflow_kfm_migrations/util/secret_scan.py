"""Secret detection (detect-secrets plus our own DSN / private-key rules) and redaction.

Used at validate time on every file of a bundle, and on every artifact and message
the tool writes, so that no credential ever reaches a receipt, a log line or an error.
"""

from __future__ import annotations

import re
import threading
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


# What earlier scans of this process found, by (label, sha256 of the bytes scanned): a file
# is scanned again only when its content changed (``migrate`` and ``status`` see each bundle
# more than once; a long-lived worker sees the same bundles run after run).
_SCANNED: dict[tuple[str, str], tuple[SecretFinding, ...]] = {}
_SCANNED_MAX = 4096
# detect-secrets keeps its settings in module globals: one session at a time (``migrate``
# scans the next bundle in a thread while a run goes on).
_DETECT_SECRETS = threading.Lock()


def scan_file(path: Path, label: str | None = None) -> list[SecretFinding]:
    """Scan one file; binary or non-UTF-8 files are scanned by detect-secrets only."""
    return scan_files([(path, label or str(path))])


def scan_files(files: list[tuple[Path, str]]) -> list[SecretFinding]:
    """Scan files (path, label), in one detect-secrets session (its settings and plugins set
    up once, not once per file); a file whose content an earlier scan saw is not scanned again."""
    import hashlib

    out: list[SecretFinding] = []
    todo: list[tuple[Path, str, tuple[str, str], bytes]] = []
    for path, label in files:
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        key = (label, hashlib.sha256(data).hexdigest())
        if key in _SCANNED:
            out.extend(_SCANNED[key])
        else:
            todo.append((path, label, key, data))
    if not todo:
        return out
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    with _DETECT_SECRETS, default_settings():
        for path, label, key, data in todo:
            if key in _SCANNED:  # another thread scanned it meanwhile
                out.extend(_SCANNED[key])
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            found = _own_rules(text, label)
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
            if len(_SCANNED) >= _SCANNED_MAX:
                _SCANNED.clear()
            _SCANNED[key] = tuple(unique)
            out.extend(unique)
    return out


def scan_text(text: str, label: str = "<text>") -> list[SecretFinding]:
    """Our own rules only (cheap); for strings the tool is about to write."""
    return _own_rules(text, label)


def redact(text: str) -> str:
    """Remove credentials from a message (e.g. a driver error that echoes a DSN)."""
    text = DSN_WITH_PASSWORD.sub(lambda m: m.group(0).replace(m.group(1), "***"), text)
    text = KV_PASSWORD.sub("password=***", text)
    return PRIVATE_KEY.sub("[private key]", text)
