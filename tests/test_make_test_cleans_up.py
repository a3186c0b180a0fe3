"""A test session stops the PostgreSQL it started, and leaves one it found running alone; a stop
leaves nothing behind in /tmp."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "postgres.sh"


def _start(data: Path) -> bool:
    """Start the cluster in ``data``; whether it had to start (it was not running)."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "start", str(data)], capture_output=True, text=True, check=True, timeout=200
    )
    return "starting the server" in done.stderr


def _session(data: Path) -> subprocess.CompletedProcess[str]:
    """A pytest session of one PostgreSQL test, on its own cluster in ``data``."""
    env = {**os.environ, "SEQUENCES_PG_DATA": str(data), "CI": "true"}
    env.pop("PGPORT", None)
    test = "tests/test_sync_state.py::test_record_upserts_one_row_per_key"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


def test_a_session_stops_the_postgresql_it_started(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    try:
        done = _session(data)
        assert done.returncode == 0, done.stdout[-3000:]
        assert "3 passed" in done.stdout  # SQLite and PostgreSQL (two drivers): it did start
        assert _start(data), "the session left its PostgreSQL running"

        # Running before the session (the call above started it): still running after it.
        done = _session(data)
        assert done.returncode == 0, done.stdout[-3000:]
        assert not _start(data), "the session stopped a PostgreSQL it did not start"
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", str(data)], capture_output=True, timeout=120, check=False
        )


def test_a_stop_removes_the_cluster_it_had_to_keep_in_tmp(tmp_path: Path) -> None:
    # pytest's tmp_path is private to root (0700): the server's user cannot reach it, so the
    # script keeps the cluster in a directory of its own under /tmp, which no caller removes.
    data = tmp_path / "pg"
    done = subprocess.run(
        ["bash", str(SCRIPT), "start", str(data)], capture_output=True, text=True, check=True, timeout=200
    )
    try:
        moved = re.search(r"using (/\S+)", done.stderr)
        if moved is None:
            assert (data / "PG_VERSION").exists()
            pytest.skip("run as the server's own user: the cluster stays in DATA_DIR, nothing in /tmp")
        fallback = Path(moved.group(1))
        assert (fallback / "PG_VERSION").exists()
        lock = next(Path(fallback.parent).glob(f"{fallback.name}-*.lock"))
    finally:
        stop = subprocess.run(
            ["bash", str(SCRIPT), "stop", str(data)], capture_output=True, text=True, timeout=120, check=False
        )
    assert stop.returncode == 0, stop.stderr
    assert not fallback.exists(), "the stop left the cluster it kept in /tmp"
    assert not lock.exists(), "the stop left its lock file"
