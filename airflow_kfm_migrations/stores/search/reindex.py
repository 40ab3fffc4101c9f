"""One ``reindex`` action: an asynchronous reindex task polled to completion (with the
lock's heartbeat, within the declared statement timeout), then the destination's new
document count checked against the source's."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from airflow_kfm_migrations.contracts.models import WriteCount
from airflow_kfm_migrations.stores.search.actions import Action
from airflow_kfm_migrations.stores.search.client import CallError, SearchClient
from airflow_kfm_migrations.util.secret_scan import redact

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 30.0  # how long a stopped run waits for its cancelled task to end


@dataclass
class Reindexed:
    """What the reindex actions of one run did, added up."""

    docs: int = 0
    writes: list[WriteCount] = field(default_factory=list)


def duration_seconds(interval: str) -> float:
    """Seconds of a declared timeout (``500ms``, ``30s``, ``15min``, ``2h``); 900 when unreadable."""
    m = re.fullmatch(r"([0-9]+)(ms|s|min|h)", interval)
    if not m:
        return 900.0
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


def run_reindex(
    client: SearchClient,
    act: Action,
    total: Reindexed,
    *,
    timeout: str,
    heartbeat: Callable[[], None],
    on_task: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> str | None:
    """Run one reindex action and add its counts to ``total``; the error, or None.
    ``on_task`` is called with the task's id as soon as the cluster answered (the in-flight
    record keeps it, so that a recovery can cancel the task if this run dies). When ``stop``
    turns true (the run was asked to stop), the task is cancelled and waited for: what it
    wrote is then the abort's to delete, and nothing writes on."""
    b = act.body
    c = client
    src, dest = b["source"], b["dest"]
    c.refresh(dest)
    dest_before = c.count(dest) if c.index_exists(dest) else 0
    body: dict[str, Any] = {"source": {"index": src}, "dest": {"index": dest}}
    if "query" in b:
        body["source"]["query"] = b["query"]
    if "script" in b:
        body["script"] = b["script"]
    task = c.reindex_async(body, slices=b.get("slices"), rps=b.get("requests_per_second"))
    if on_task is not None:
        try:
            on_task(task)
        except BaseException:  # broad on purpose: a task nobody knows of must not run on
            with suppress(CallError):
                c.cancel_task(task)
            raise
    deadline = time.monotonic() + duration_seconds(timeout)
    last_log = 0.0
    while True:
        t = c.get_task(task)
        if t.get("completed"):
            break
        if stop is not None and stop():
            return cancel_and_wait(c, task, f"reindex {src} -> {dest}")
        if time.monotonic() > deadline:
            with suppress(CallError):
                c.cancel_task(task)
            return f"reindex {src} -> {dest} did not finish within {timeout}"
        st = (t.get("task") or {}).get("status") or {}
        if time.monotonic() - last_log > 5:
            log.info(
                "reindex %s -> %s: %s/%s documents",
                src,
                dest,
                int(st.get("created", 0)) + int(st.get("updated", 0)),
                st.get("total", "?"),
            )
            last_log = time.monotonic()
        heartbeat()
        for _ in range(5):  # a stop request is seen within a tenth of a second
            if stop is not None and stop():
                break
            time.sleep(POLL_SECONDS / 5)
    if stop is not None and stop():  # it ended meanwhile (cancelled, or done): the run stops all the same
        if ((t.get("task") or {}).get("status") or {}).get("canceled"):
            return f"reindex {src} -> {dest} was cancelled (task {task})"
        return f"reindex {src} -> {dest} finished, then the run was asked to stop"
    if t.get("error"):
        err = t["error"]
        return f"reindex {src} -> {dest} failed: {err.get('type', 'error')}: {redact(str(err.get('reason', '')))}"
    resp = t.get("response") or {}
    failures = resp.get("failures") or []
    if failures:
        first = failures[0]
        cause = first.get("cause", {}) if isinstance(first, dict) else {}
        return f"reindex {src} -> {dest}: {len(failures)} failure(s), first: {cause.get('type', 'error')}"
    created, updated, deleted = (int(resp.get(k, 0)) for k in ("created", "updated", "deleted"))
    total.docs += int(resp.get("total", created + updated))
    total.writes.append(WriteCount(table=dest, inserted=created, updated=updated, deleted=deleted))
    c.refresh(src)
    c.refresh(dest)
    expected = c.count(src, b.get("query"))
    got = c.count(dest) - dest_before
    log.info("reindex %s -> %s done: %d documents, dest gained %d, expected %d", src, dest, created, got, expected)
    if got != expected:
        return f"doc count mismatch: {dest} gained {got} documents, {src} has {expected}" + (
            " matching the query" if "query" in b else ""
        )
    return None


def cancel_and_wait(c: SearchClient, task: str, what: str) -> str:
    """Cancel ``task`` and wait until the cluster says it completed; the error to report."""
    with suppress(CallError):
        c.cancel_task(task)
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            if c.get_task(task).get("completed"):
                return f"{what} was cancelled (task {task})"
        except CallError as exc:
            if exc.status == 404:
                return f"{what} was cancelled (task {task})"
            raise
        time.sleep(0.1)
    return f"{what} was cancelled (task {task}) but still ran after {CANCEL_WAIT_SECONDS:g}s"
