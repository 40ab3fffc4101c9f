"""util.cancel.Cancellation: what ``on_kill`` sets, and the hooks the run's session registered."""

from __future__ import annotations

import signal
import threading

from airflow_kfm_migrations.util.cancel import Cancellation


def test_hooks_run_once_in_another_thread_and_the_first_reason_wins() -> None:
    c = Cancellation()
    calls: list[str] = []
    with c.registered(lambda: calls.append(threading.current_thread().name)):
        assert c.reason is None and not c.wait(0)
        c.cancel("first")
        c.cancel("second")
    assert c.reason == "first" and c.wait(0)
    assert calls == ["kfm-cancel"]


def test_a_hook_registered_after_the_cancel_runs_at_once_and_a_left_one_never() -> None:
    c = Cancellation()
    left: list[int] = []
    with c.registered(lambda: left.append(1)):
        pass
    c.cancel("stop")
    late: list[int] = []
    with c.registered(lambda: late.append(1)):
        assert late == [1]
    assert left == []


def test_a_failing_hook_does_not_stop_the_others() -> None:
    c = Cancellation()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("server gone")

    with c.registered(broken), c.registered(lambda: ran.append("second")):
        c.cancel("stop")
    assert ran == ["second"]


def test_cancel_from_a_signal_handler_while_the_main_thread_holds_what_the_hook_needs() -> None:
    """on_kill runs in a signal handler that interrupted the main thread, which may hold a lock
    the hook needs (a connection pool's): the hook waits in its own thread and runs once the
    main thread goes on, instead of deadlocking the handler."""
    c = Cancellation()
    pool = threading.Lock()
    got: list[bool] = []
    done = threading.Event()

    def hook() -> None:
        got.append(pool.acquire(timeout=30))
        pool.release()
        done.set()

    previous = signal.signal(signal.SIGUSR1, lambda *_: c.cancel("killed", wait_seconds=0.1))
    try:
        with c.registered(hook), pool:
            signal.raise_signal(signal.SIGUSR1)  # the handler runs here, in this thread, pool held
            assert c.reason == "killed" and got == []
        assert done.wait(30)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert got == [True]
