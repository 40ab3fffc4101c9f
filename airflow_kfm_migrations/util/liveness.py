"""Is the process that holds a lock still alive? A lock records the host identity and the
PID of its holder; a later run on the same host (same hostname, boot and PID namespace)
whose PID no longer exists knows the holder is dead without waiting for a timeout."""

from __future__ import annotations

import os
import socket
from contextlib import suppress
from pathlib import Path


def host_identity() -> str:
    """This host and PID namespace: a lock holder with the same identity whose PID no longer
    exists is certainly dead (containers sharing a hostname differ in PID namespace)."""
    parts = [socket.gethostname()]
    with suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists here (a zombie, not yet reaped, still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder_gone(host: object, pid: object) -> bool:
    """True when a holder recorded as (``host``, ``pid``) ran on this host and is gone."""
    return isinstance(host, str) and host == host_identity() and isinstance(pid, int) and not pid_alive(pid)
