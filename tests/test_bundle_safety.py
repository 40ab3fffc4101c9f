"""The acceptance cases for hostile input: one clear line, exit 2, nothing written (how fast is not a
test's business: see bench/RESULTS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MIGRATIONS

EXAMPLE = MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01"


def _bundle(tmp_path: Path) -> Path:
    dst = tmp_path / EXAMPLE.name
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    return dst


def _run(*args: str) -> tuple[int, str, str]:
    p = subprocess.run(
        [sys.executable, "-m", "airflow_kfm_migrations.cli", *args], capture_output=True, text=True, timeout=60
    )
    return p.returncode, p.stdout, p.stderr


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.lstat().st_mtime for p in root.rglob("*")}


BOMB = (
    "\n".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
            f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]"
            for i in range(8)
        ]
    )
    + "\n"
)


def _yaml_bomb(b: Path) -> str:
    (b / "migration.yml").write_text(BOMB)
    return "YAML anchors are not allowed"


def _traversal(b: Path) -> str:
    text = (b / "migration.yml").read_text().replace("- forward.sql", "- ../../etc/passwd")
    (b / "migration.yml").write_text(text)
    return "'../../etc/passwd' must be relative and stay inside the bundle"


def _symlink(b: Path) -> str:
    (b / "forward.sql").unlink()
    os.symlink("/etc/passwd", b / "forward.sql")
    return "symlink leaves the bundle"


def _huge(b: Path) -> str:
    with (b / "migration.yml").open("ab") as fh:
        fh.write(b"# " + b"x" * (50 * 1024 * 1024) + b"\n")
    return "over the 262144-byte cap"


def _bad_utf8(b: Path) -> str:
    (b / "migration.yml").write_bytes((b / "migration.yml").read_bytes().replace(b"spatial", b"spa\xc3\x28tial"))
    return "not valid UTF-8"


def _dupes(b: Path) -> str:
    with (b / "migration.yml").open("a") as fh:
        fh.write("requires_rollback: false\n")
    return "duplicate key 'requires_rollback'"


@pytest.mark.parametrize(
    "make", [_yaml_bomb, _traversal, _symlink, _huge, _bad_utf8, _dupes], ids=lambda f: f.__name__.strip("_")
)
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_hostile_input_gets_one_line_and_exit_2(tmp_path: Path, make, command: str) -> None:
    b = _bundle(tmp_path)
    expected = make(b)
    before = _snapshot(tmp_path)
    extra = ["--conn-id", "nowhere"] if command == "run" else []
    code, out, err = _run(command, str(b), *extra)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "migration.yml" in lines[0] or "forward.sql" in lines[0]
    assert "Traceback" not in err + out
    assert _snapshot(tmp_path) == before, "nothing may be written"
