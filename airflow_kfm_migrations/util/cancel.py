"""A run's stop request: :class:`Cancellation`.

Airflow kills a task by sending SIGTERM to the task process. The task runner's handler
calls the operator's ``on_kill()`` in the process's main thread, between two bytecodes of
whatever ``execute`` was doing (a blocked call is resumed afterwards: Python retries an
interrupted system call once the handler returned), and raises nothing (Airflow 3.1 to 3.3).
The supervisor sends SIGKILL a few seconds later (5 s when the task instance was marked
failed) if the process is still there. So ``on_kill`` has to make the blocked work end by
itself, soon: it asks the server to stop (cancel the running statement, the reindex task),
and the run, resumed, sees the request and fails closed through its normal path.

:meth:`Cancellation.cancel` records the reason and runs the hooks that the run's session
registered, in a helper thread it waits for (bounded): the interrupted main thread may hold
a lock (a connection pool's, a client's) that a hook needs, and a hook run in the signal
handler itself would wait for it forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Hook = Callable[[], None]

KILLED_BY_AIRFLOW = "killed by Airflow (on_kill)"
HOOK_WAIT_SECONDS = 3.0  # how long cancel() waits for the hooks before it returns


class Cancellation:
    """Thread-safe, and safe to call from a signal handler: set once, read anywhere."""

    def __init__(self) -> None:
        # Re-entrant: cancel() may run in a signal handler that interrupted register().
        self._mutex = threading.RLock()
        self._reason: str | None = None
        self._hooks: list[Hook] = []
        self._set = threading.Event()

    @property
    def reason(self) -> str | None:
        """Why the run was asked to stop, or None."""
        return self._reason

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once when cancelled; True when cancelled."""
        return self._set.wait(seconds)

    @contextmanager
    def registered(self, hook: Hook) -> Iterator[None]:
        """Run ``hook`` on :meth:`cancel` while inside the block (at once if already
        cancelled). Hooks must be idempotent and must not raise."""
        with self._mutex:
            self._hooks.append(hook)
            already = self._reason is not None
        if already:
            _run_hooks([hook])
        try:
            yield
        finally:
            with self._mutex:
                if hook in self._hooks:
                    self._hooks.remove(hook)

    def cancel(self, reason: str, *, wait_seconds: float = HOOK_WAIT_SECONDS) -> None:
        """Ask the run to stop: record ``reason`` (the first one wins) and run the registered
        hooks in a helper thread, waiting up to ``wait_seconds`` for them."""
        with self._mutex:
            if self._reason is not None:
                return
            self._reason = reason
            hooks = list(self._hooks)
        self._set.set()
        if not hooks:
            return
        worker = threading.Thread(target=_run_hooks, args=(hooks,), name="kfm-cancel", daemon=True)
        worker.start()
        worker.join(wait_seconds)


def _run_hooks(hooks: list[Hook]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception as exc:  # broad on purpose: a hook's failure must not stop the others
            log.warning("cancelling the run's server-side work failed (%s)", type(exc).__name__)
