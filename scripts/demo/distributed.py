"""The REST and checking half of scripts/demo-distributed.sh (that script starts the processes).

    python scripts/demo/distributed.py --api http://127.0.0.1:8390 --user kfm_demo \
        --password-file PATH --dag DAG_ID --artifacts s3://kfm_s3@bucket/prefix/MIGRATION_ID \
        --summary summary.json [--timeout 600] [--alive PID ...]

Through Airflow 3's public REST API (/api/v2, a bearer token from POST /auth/token of the
simple auth manager): waits until the DAG is parsed, unpauses it, triggers a run, waits for
it to finish, then prints each task instance with the hostname of the worker that ran it.
Then ``kfm-migrations verify <artifacts>`` reads the receipt from the object store.

Exit 0 only when the run succeeded, the tasks ran on at least two different hostnames and
verify exited 0. The summary (JSON) records all of it for tests/test_distributed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FINISHED = {"success", "failed"}


class Api:
    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base.rstrip("/")
        self.user, self.password = user, password
        self.token = ""

    def login(self) -> None:
        body = self._call("POST", "/auth/token", {"username": self.user, "password": self.password}, auth=False)
        self.token = body["access_token"]

    def _call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return self._call(method, path, body)
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
            self.login()  # the token expired
            return self._call(method, path, body)


def check_alive(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise SystemExit(f"an Airflow component (pid {pid}) exited; see the logs below") from None


def wait_for(what: str, probe: Any, deadline: float, pids: list[int], every: float = 1.0) -> Any:
    while True:
        got = probe()
        if got:
            return got
        check_alive(pids)
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def dag_parsed(api: Api, dag_id: str) -> bool:
    try:
        api.call("GET", f"/api/v2/dags/{dag_id}")
        return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--api", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True, type=Path)
    ap.add_argument("--dag", required=True)
    ap.add_argument("--artifacts", required=True, help="the migration's artifacts URL, for verify")
    ap.add_argument("--summary", required=True, type=Path)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--alive", type=int, nargs="*", default=[], help="pids that must stay up")
    a = ap.parse_args()

    deadline = time.monotonic() + a.timeout
    password = json.loads(a.password_file.read_text())[a.user]
    api = Api(a.api, a.user, password)

    def logged_in() -> bool:
        try:
            api.login()
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for("the API server", logged_in, deadline, a.alive)
    wait_for(f"the DAG {a.dag} to be parsed", lambda: dag_parsed(api, a.dag), deadline, a.alive)
    api.call("PATCH", f"/api/v2/dags/{a.dag}", {"is_paused": False})
    run_id = "demo_distributed__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    api.call("POST", f"/api/v2/dags/{a.dag}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": {}})
    print(f"triggered {a.dag} run {run_id} through {a.api}/api/v2", flush=True)
    t0 = time.monotonic()

    def finished() -> str | None:
        state = api.call("GET", f"/api/v2/dags/{a.dag}/dagRuns/{run_id}")["state"]
        return state if state in FINISHED else None

    state = wait_for(f"run {run_id} to finish", finished, deadline, a.alive, every=2.0)
    print(f"DAG run {run_id}: {state} after {time.monotonic() - t0:.0f} s", flush=True)

    tis = api.call("GET", f"/api/v2/dags/{a.dag}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    tis.sort(key=lambda t: (t.get("start_date") or "~", t["task_id"]))
    print(f"  {'task':<15} {'state':<16} {'queue':<10} hostname (the worker that ran it)")
    for t in tis:
        print(f"  {t['task_id']:<15} {t['state'] or '-':<16} {t.get('queue') or '-':<10} {t.get('hostname') or '-'}")
    hosts = sorted({t["hostname"] for t in tis if t.get("hostname")})

    print(f"kfm-migrations verify {a.artifacts}", flush=True)
    verify = subprocess.run(["kfm-migrations", "verify", a.artifacts], capture_output=True, text=True)
    print("\n".join("  " + line for line in (verify.stdout + verify.stderr).strip().splitlines()))

    summary = {
        "dag_id": a.dag,
        "run_id": run_id,
        "state": state,
        "task_instances": [
            {k: t.get(k) for k in ("task_id", "state", "queue", "hostname", "try_number", "start_date", "end_date")}
            for t in tis
        ],
        "hostnames": hosts,
        "artifacts": a.artifacts,
        "verify_exit": verify.returncode,
        "verify_output": verify.stdout + verify.stderr,
    }
    a.summary.parent.mkdir(parents=True, exist_ok=True)
    a.summary.write_text(json.dumps(summary, indent=2) + "\n")

    problems = []
    if state != "success":
        problems.append(f"the DAG run ended {state}")
    if len(hosts) < 2:
        problems.append(f"the tasks ran on {len(hosts)} hostname(s), expected two workers: {hosts}")
    if verify.returncode != 0:
        problems.append(f"kfm-migrations verify exited {verify.returncode}")
    for p in problems:
        print(f"FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
