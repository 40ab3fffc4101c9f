"""Artifacts in object storage: each task stages privately and writes back at once.

The core (engine, app) reads and writes a local artifacts folder. When ``artifacts_root``
is a URL that :class:`airflow.sdk.ObjectStoragePath` understands (``s3://<conn_id>@bucket/
prefix``, ``gs://...``, ``file:///...``), every task works in a fresh temporary folder of
its own on its worker:

1. it fetches, from ``<root>/<migration_id>/``, what its core step reads (the latest
   receipt; for a rollback the whole chain and the outputs back to the last apply; for the
   receipt task and ``verify`` the whole chain and the outputs of the receipt checked);
2. the core step runs against that folder;
3. whatever the step wrote or changed goes back to the store right away, also when the step
   failed, the pointers (``run_receipt.json``, ``receipt_ref.json``) last, so the store's
   latest receipt never names an object that is not there yet;
4. the folder is removed.

No task reads another task's local files; only digests and small summaries go through
XCom. The Airflow connection named in the URL's userinfo gives the credentials, exactly as
for any ObjectStoragePath; a URL never carries a credential itself.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

from airflow_kfm_migrations.errors import InputError, VerifyMismatch
from airflow_kfm_migrations.util.digest import sha256_bytes, sha256_file, write_bytes_atomic

# engine/receipts.py and engine/run.py name these; the operators module imports them at DAG
# parse time, so it keeps its imports light (tests/test_object_artifacts.py checks they agree).
RECEIPT = PurePosixPath("receipts/run_receipt.json")
HISTORY = PurePosixPath("receipts/history")
REF = PurePosixPath("receipts/receipt_ref.json")
RUNS = "runs"
STAGE_PREFIX = "kfm-stage-"
# What a task fetches before its core step (the operator's ``artifacts_fetch``):
LATEST = "latest"  # receipts/run_receipt.json: the chain's head, the outputs a no-op carries
APPLY = "apply"  # the whole chain, the outputs of its receipts back to the last apply (rollback)
ALL = "all"  # the whole chain, the outputs and latest views of the receipt checked (verify)

_F = TypeVar("_F", bound=Callable[..., Any])


def is_url(root: str) -> bool:
    return "://" in root


def shown(url: str) -> str:
    """A URL fit for a message: a password in its userinfo (never valid here) is masked."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    from airflow_kfm_migrations.util.secret_scan import redact

    return redact(url)


def store_path(url: str, field: str = "artifacts_root") -> Any:
    """The ObjectStoragePath of ``url``, its filesystem resolved now: an unknown scheme or
    connection is one line (exit 2), not an error at the first read."""
    parts = urlsplit(url)
    if parts.password is not None:
        raise InputError(shown(url), field, "the URL's userinfo names an Airflow connection id, never credentials")
    if not parts.scheme or (parts.scheme != "file" and not parts.netloc.rpartition("@")[2]):
        raise InputError(shown(url), field, "expected scheme://[conn_id@]bucket/prefix, e.g. s3://kfm_s3@artifacts/kfm")
    conn_id = parts.netloc.rpartition("@")[0]
    if conn_id:  # an unknown connection would silently fall back to anonymous access
        try:
            from airflow.sdk import Connection

            Connection.get(conn_id)
        except Exception as exc:  # broad on purpose: not defined, or no secrets backend reachable
            raise InputError(shown(url), field, f"no Airflow connection {conn_id!r} ({reason(exc)})") from None
    try:
        from airflow.sdk import ObjectStoragePath

        path = ObjectStoragePath(url)
        path.fs  # noqa: B018 - resolves the scheme and the connection (its credentials) now
    except Exception as exc:  # broad on purpose: any scheme/connection/client failure is a bad URL here
        raise InputError(shown(url), field, f"cannot open this store: {reason(exc)}") from None
    return path


def reason(exc: BaseException) -> str:
    """One line about a store error, redacted, without the traceback."""
    from airflow_kfm_migrations.util.secret_scan import redact

    text = " ".join(str(exc).split())[:300]
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _safe(rel: str) -> str | None:
    """``rel`` when it is a plain relative path inside the folder, else None (never fetched:
    verify reports a receipt that lists such a path)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        return None
    return pure.as_posix()


class Stage:
    """A private local copy of one migration's artifacts folder in an object store."""

    def __init__(self, url: str, *, log: Callable[[str], None] | None = None, field: str = "artifacts_root") -> None:
        self.url = url.rstrip("/")
        self.remote = store_path(self.url, field)
        self.dir = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX))
        self.fetched: dict[str, str] = {}  # rel path -> sha256 of what came from the store
        self.log = log or (lambda _line: None)

    # ------------------------------------------------------------------ fetch

    def get(self, rel: str) -> Path | None:
        """Fetch one object into the stage (once); None when the store has no such object."""
        safe = _safe(rel)
        if safe is None:
            return None
        local = self.dir / safe
        if safe in self.fetched:
            return local
        try:
            data = (self.remote / safe).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        write_bytes_atomic(local, data)
        self.fetched[safe] = sha256_file(local)
        return local

    def doc(self, rel: str) -> dict[str, Any] | None:
        path = self.get(rel)
        if path is None:
            return None
        try:
            doc = json.loads(path.read_bytes())
        except ValueError:
            return None  # verify reports it; a run then starts a new chain head
        return doc if isinstance(doc, dict) else None

    def pull(self, mode: str = LATEST, start: str = RECEIPT.as_posix()) -> None:
        """Fetch what a core step reads (see the module's docstring)."""
        head = self.doc(start)
        if mode != LATEST and start != RECEIPT.as_posix():
            self.get(RECEIPT.as_posix())  # verify asks whether the receipt checked is the latest
        doc, seen, outputs = head, set(), True
        while doc is not None:
            digest = doc.get("receipt_digest")
            if isinstance(digest, str):
                self.get((HISTORY / f"{digest}.json").as_posix())
            if mode == LATEST:
                break
            raw = doc.get("outputs")
            listed = [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []
            if outputs:
                for ref in listed:
                    self.get(str(ref.get("path", "")))
            if mode == ALL and doc is head and self.is_latest(doc):
                for ref in listed:
                    parts = PurePosixPath(str(ref.get("path", ""))).parts
                    if len(parts) > 2 and parts[0] == RUNS:  # the latest run's view of its output
                        self.get(PurePosixPath(*parts[2:]).as_posix())
            # ALL: the outputs of the receipt checked; APPLY: those back to the last apply.
            # Both walk the whole chain's receipts (verify checks every link).
            outputs = mode == APPLY and outputs and doc.get("operation") != "apply"
            prev = doc.get("previous_receipt_digest")
            if not isinstance(prev, str) or prev in seen:
                break
            seen.add(prev)
            doc = self.doc((HISTORY / f"{prev}.json").as_posix())

    def is_latest(self, doc: dict[str, Any]) -> bool:
        latest = self.doc(RECEIPT.as_posix())
        return latest is not None and latest.get("receipt_digest") == doc.get("receipt_digest")

    # ------------------------------------------------------------------- push

    def push(self) -> list[str]:
        """Write every file the step created or changed to the store; the latest receipt and
        its pointer last. Returns the relative paths written."""
        changed = []
        for f in sorted(self.dir.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                rel = f.relative_to(self.dir).as_posix()
                if self.fetched.get(rel) != sha256_file(f):
                    changed.append(rel)
        last = (RECEIPT.as_posix(), REF.as_posix())
        changed.sort(key=lambda rel: last.index(rel) + 1 if rel in last else 0)
        for rel in changed:
            data = (self.dir / rel).read_bytes()
            if rel == REF.as_posix():
                data = self.absolute_ref(data)
            self.put(rel, data)
        return changed

    def put(self, rel: str, data: bytes) -> None:
        target = self.remote / rel
        if self.remote.protocol in ("file", "local"):
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.fetched[rel] = sha256_bytes(data)  # a second push writes it only if it changes again

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def absolute_ref(self, data: bytes) -> bytes:
        """The pointer the core wrote, with its ``uri`` made the receipt's absolute URL."""
        try:
            ref = json.loads(data)
            uri = str(ref["uri"])
        except (ValueError, KeyError, TypeError):
            return data
        if is_url(uri):
            return data
        from airflow_kfm_migrations.engine.receipts import receipt_ref

        doc = {k: ref[k] for k in ("migration_id", "run_id", "status", "receipt_digest")}
        return receipt_ref(doc, uri=self.url_of(uri))

    def write_ref(self, doc: dict[str, Any]) -> str:
        """Write ``receipts/receipt_ref.json`` for ``doc`` in the store; returns the receipt's URL."""
        from airflow_kfm_migrations.engine.receipts import receipt_ref

        url = self.url_of((HISTORY / f"{doc['receipt_digest']}.json").as_posix())
        data = receipt_ref(doc, uri=url)
        write_bytes_atomic(self.dir / REF, data)
        self.put(REF.as_posix(), data)
        return url

    def named(self, exc: Exception) -> Exception:
        """The same error (a mismatch, a missing file), naming the object in the store
        instead of its staged copy."""
        file = getattr(exc, "file", None)
        if not file:
            return exc
        try:  # messages name files relative to the working directory when they are under it
            rel = Path(file).absolute().resolve().relative_to(self.dir.resolve()).as_posix()
        except (ValueError, OSError):
            return exc
        if isinstance(exc, InputError):
            return InputError(self.url_of(rel), exc.field, exc.reason)
        if isinstance(exc, VerifyMismatch):
            return VerifyMismatch(exc.reason, file=self.url_of(rel))
        return exc

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- task staging

_ACTIVE: ContextVar[_TaskStaging | None] = ContextVar("kfm_task_staging", default=None)


class _TaskStaging:
    """The stage of one task's execute, opened on the first ``run_options`` call."""

    def __init__(self, mode: str, log: Callable[[str], None]) -> None:
        self.mode = mode
        self.log = log
        self.stage: Stage | None = None
        self.owner: object = None  # the operator whose execute this is

    def open(self, root: str, migration_id: str) -> Stage:
        if self.stage is None:
            self.stage = Stage(f"{root.rstrip('/')}/{migration_id}", log=self.log)
            self.stage.pull(self.mode)
            self.log(f"artifacts: {len(self.stage.fetched)} object(s) fetched from {shown(self.stage.url)}")
        return self.stage

    def close(self) -> None:
        if self.stage is None:
            return
        try:
            written = self.stage.push()
            if written:
                self.log(f"artifacts: {len(written)} object(s) written to {shown(self.stage.url)}")
        finally:
            self.stage.close()


def staged_execute(execute: _F) -> _F:
    """Wrap an operator's ``execute``: a remote ``artifacts_root`` is staged for the task
    alone and written back when the task ends, however it ends."""

    @functools.wraps(execute)
    def run(self: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
        active = _ACTIVE.get()
        if active is not None and active.owner is self:  # a subclass's execute calling super().execute()
            return execute(self, context, *args, **kwargs)
        staging = _TaskStaging(getattr(self, "artifacts_fetch", LATEST), lambda line: self.log.info("%s", line))
        staging.owner = self
        token = _ACTIVE.set(staging)
        try:
            return execute(self, context, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)
            staging.close()

    return run  # type: ignore[return-value]


def task_workdir(root: str, migration_id: str) -> Path:
    """The local folder the current task's core step works in, for a URL ``artifacts_root``."""
    staging = _ACTIVE.get()
    if staging is None:
        raise RuntimeError("a URL artifacts_root is staged only inside an operator's execute (staged_execute)")
    return staging.open(root, migration_id).dir


def task_stage() -> Stage | None:
    staging = _ACTIVE.get()
    return staging.stage if staging is not None else None


# ----------------------------------------------------------------------- verify


def receipt_location(url: str) -> tuple[str, str]:
    """(artifacts folder URL, receipt's path in it) for a ``verify`` URL: the folder, its
    ``receipts/run_receipt.json``, or a ``receipts/history/<digest>.json``."""
    url = url.rstrip("/")
    for marker in (f"/{HISTORY.as_posix()}/", f"/{RECEIPT.as_posix()}"):
        head, sep, tail = url.rpartition(marker)
        if sep and (marker.endswith("/") or not tail):
            return head, marker.lstrip("/") + tail
    return url, RECEIPT.as_posix()


def load_ref(text: bytes, where: str) -> dict[str, Any]:
    from pydantic import ValidationError

    from airflow_kfm_migrations.contracts import adapter

    try:
        doc = json.loads(text)
        adapter("receipt_ref.v1").validate_python(doc)
    except ValueError as exc:  # JSON or schema: the pointer is unusable input
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        field = ".".join(str(p) for p in first["loc"]) if first else "-"
        raise InputError(where, field, first["msg"] if first else "not a receipt_ref.v1 JSON document") from None
    return dict(doc)


@contextmanager
def verify_target(target: str) -> Iterator[tuple[Path, Stage | None]]:
    """The local receipt file ``verify`` checks for ``target``: a local receipt or folder
    (as is), a URL in an object store (fetched into a private temporary folder), or a
    ``receipt_ref.json`` pointer (local or in a store), followed to its receipt after its
    digest is checked."""
    pointer: tuple[str, dict[str, Any]] | None = None
    if target.rstrip("/").endswith(REF.name):
        if is_url(target):
            parent = target.rstrip("/").rpartition("/")[0]
            ref_stage = Stage(parent, field="target")
            try:
                got = ref_stage.get(REF.name)
                if got is None:
                    raise InputError(shown(target), "-", "no such receipt_ref.json")
                pointer = (shown(target), load_ref(got.read_bytes(), shown(target)))
            except InputError:
                raise
            except Exception as exc:  # broad on purpose: an unreachable store is one line, exit 2
                raise InputError(shown(target), "-", f"cannot read from this store: {reason(exc)}") from None
            finally:
                ref_stage.close()
            base = parent.removesuffix("/receipts")
        else:
            path = Path(target)
            try:
                pointer = (target, load_ref(path.read_bytes(), target))
            except OSError as exc:
                raise InputError(target, "-", f"cannot read the pointer ({type(exc).__name__})") from None
            from airflow_kfm_migrations.app.verify import artifacts_dir_of

            base = str(artifacts_dir_of(path))
        uri = str(pointer[1]["uri"])
        target = uri if is_url(uri) else (f"{base}/{uri}" if is_url(base) else str(Path(base) / uri))
    if not is_url(target):
        from airflow_kfm_migrations.app.verify import receipt_file

        local = receipt_file(Path(target))
        if pointer is not None:
            check_pointer(pointer, local, target)
        yield local, None
        return
    folder, rel = receipt_location(target)
    stage = Stage(folder, field="target")
    try:
        try:
            stage.pull(ALL, start=rel)
        except InputError:
            raise
        except Exception as exc:  # broad on purpose: an unreachable store is one line, exit 2
            raise InputError(shown(target), "-", f"cannot read from this store: {reason(exc)}") from None
        local = stage.dir / rel
        if not local.is_file():
            raise InputError(shown(stage.url_of(rel)), "-", "no such receipt")
        if pointer is not None:
            check_pointer(pointer, local, stage.url_of(rel))
        yield local, stage
    finally:
        stage.close()


def check_pointer(pointer: tuple[str, dict[str, Any]], receipt: Path, shown_as: str) -> None:
    """The pointer's digest must be the digest of the receipt it points at (exit 1)."""
    from airflow_kfm_migrations.app.verify import load_receipt
    from airflow_kfm_migrations.engine.receipts import receipt_digest

    where, ref = pointer
    try:
        doc = load_receipt(receipt)
    except InputError:
        raise InputError(shown(shown_as), "-", f"no such receipt (named by the pointer {where})") from None
    except VerifyMismatch as exc:
        raise VerifyMismatch(exc.reason, file=shown(shown_as)) from None
    actual = receipt_digest(doc)
    if actual != ref["receipt_digest"]:
        raise VerifyMismatch(
            f"receipt_digest: the pointer names {ref['receipt_digest']}, the receipt at {shown(shown_as)} "
            f"has {actual}",
            file=where,
        )
    for key in ("migration_id", "run_id", "status"):
        if doc.get(key) != ref.get(key):
            raise VerifyMismatch(
                f"{key}: the pointer says {ref.get(key)}, the receipt at {shown(shown_as)} says {doc.get(key)}",
                file=where,
            )


def ref_for(receipt: Path, stage: Stage | None, dest: Path) -> bytes:
    """A pointer to the verified ``receipt``, to commit at ``dest`` (e.g. with the bundle):
    the receipt's URL when it is in a store, else its path relative to ``dest``'s folder."""
    import os

    from airflow_kfm_migrations.app.verify import artifacts_dir_of, load_receipt
    from airflow_kfm_migrations.engine.receipts import receipt_ref

    doc = load_receipt(receipt)
    if stage is not None:
        return receipt_ref(doc, base=stage.url)
    kept = artifacts_dir_of(receipt) / HISTORY / f"{doc['receipt_digest']}.json"
    rel = os.path.relpath(kept.resolve(), artifacts_dir_of(dest.absolute()).resolve())
    return receipt_ref(doc, uri=PurePosixPath(*Path(rel).parts).as_posix())
