"""Scenario 9: what a night costs against reading the export, on each sync-state store.

For each case and size: the reference read (pandas reading the same export in the same chunks,
nothing else), then on each store a first night, the same export again (unchanged) and the
next night's export (0.1% new or changed), each in a fresh worker process. The same read is
measured again just before and after each later night, beside the same simulator, and those
nights are judged against the mean of those two reads. Median of the repeats, except one
repeat from 10M rows. The ratios to the reference hold from machine to machine where absolute
rows/s do not. PostgreSQL runs on
loopback, started by the bench with ``scripts/postgres.sh`` and stopped after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.harness import ROOT, SimProcess, export, run_worker, summary
from bench.scenarios import CASES, _spec

#: The issue's targets, as ratios to the reference read or to the SQLite figure.
TARGETS = {
    "unchanged_over_read": 2.0,
    "changed_over_read_10m": 2.5,
    "postgres_over_sqlite_1m": 1.5,
    "postgres_unchanged_over_read_10m": 3.0,
    "peak_rss_mb_10m": 1024,
    "rss_10m_over_1m": 1.5,
    "first_night_rows_per_s_10m_over_1m": 0.9,
}
#: From this size, the issue's large export: one repeat (a night takes minutes), and a next
#: night of 0.1% new or changed rows (a few thousand of ten million), not 1%.
LARGE = 10_000_000


def changed_share(rows: int) -> float:
    """The share of new or changed rows in the next night's export."""
    return 0.001 if rows >= LARGE else 0.01


@contextlib.contextmanager
def _sigterm_after() -> Iterator[None]:
    """Hold a SIGTERM back until the block ends: one that killed the script half-way through
    starting the server would leave a server that no stop finds."""
    held: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
    if held:
        signal.raise_signal(held[0])


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A PostgreSQL cluster of the bench's own on a free loopback port; its URL."""
    data = workdir / "pg"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = ROOT / "scripts" / "postgres.sh"
    bash = shutil.which("bash") or "/bin/bash"
    # Durable as the SQLite state is (fsync on, no wait for each commit's flush).
    env = {**os.environ, "PGPORT": str(port), "PG_DURABLE": "1"}
    try:
        with _sigterm_after():
            done = subprocess.run(  # noqa: S603 - the repository's own script
                [bash, str(script), "start", str(data)], capture_output=True, text=True, env=env, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh could not start PostgreSQL:\n{done.stderr[-2000:]}")
        yield done.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(  # noqa: S603
            [bash, str(script), "stop", str(data)], capture_output=True, env=env, check=False
        )


def _fresh_database(server_url: str, name: str) -> str:
    """A new, empty database on the server; its URL (SQLAlchemy, psycopg 3)."""
    url = sa.make_url(server_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def _postgres_bytes(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        size = int(connection.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one())
        # An empty database is not empty: its catalogue is some 7 MB.
        empty = int(connection.execute(sa.text("SELECT pg_database_size('template1')")).scalar_one())
    engine.dispose()
    return size - empty


def reference_read(path: Path, repeats: int) -> dict[str, Any]:
    walls = [
        run_worker("bench.reference", {"kind": "read", "export": str(path)})["wall_s"] for _ in range(repeats)
    ]
    return summary(walls)


def _read(path: Path) -> float:
    """One reference read of ``path``, in seconds."""
    return float(run_worker("bench.reference", {"kind": "read", "export": str(path)})["wall_s"])


def calibration(repeats: int) -> dict[str, Any]:
    walls = [run_worker("bench.reference", {"kind": "cpu"})["wall_s"] for _ in range(repeats)]
    return {"cpu_loop_s": summary(walls), "cpu_loop": "20,000,000 iterations of total += i & 7 (Python)"}


def _night(sim: SimProcess, case: str, sequence: Any, path: Path, store: dict[str, Any]) -> dict[str, Any]:
    service, mode = CASES[case]["service"], CASES[case]["mode"]
    sim.call("reset")
    spec = _spec(sim, service, sequence, path, store["file"], mode=mode, state_url=store.get("url"))
    result = run_worker("bench.worker", spec)
    seen = sim.call("stats")[service]
    return {
        "wall_s": round(result["wall_s"], 2),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "write_requests": seen["writes"],
        "read_requests": seen["reads"],
        "added": result["added"],
        "not_processed": result["not_processed"],
        "unchanged": result["stats"].get("unchanged", 0),
    }


def _store(kind: str, workdir: Path, pg_url: str | None, label: str) -> dict[str, Any]:
    file = workdir / f"state-{label}-{uuid.uuid4().hex[:6]}.db"
    if kind == "sqlite":
        return {"file": file}
    assert pg_url is not None
    return {"file": file, "url": _fresh_database(pg_url, label)}


def _store_bytes(store: dict[str, Any]) -> int:
    if store.get("url"):
        return _postgres_bytes(store["url"])
    return sum(p.stat().st_size for p in store["file"].parent.glob(store["file"].name + "*"))


def case_nights(
    case: str, rows: int, stores: list[str], repeats: int, workdir: Path, pg_url: str | None
) -> dict[str, Any]:
    """One case at one size: the reference read, then three nights on each store, each store
    in a simulator of its own (its first night meets no contact of another store's, and ten
    million contacts, some 10 GB in a simulator, are freed before the next)."""
    share = changed_share(rows)
    path, changed = export(rows), export(rows, night_two=True, changed_share=share)
    repeats = 1 if rows >= LARGE else repeats
    reference = reference_read(path, repeats)
    read_s = reference["median"]
    entry: dict[str, Any] = {"rows": rows, "reference_read_s": reference, "stores": {}}
    for kind in stores:
        store = _store(kind, workdir, pg_url, f"bench_{case}_{rows}_{kind}")
        with SimProcess() as sim:
            sequence = sim.call("new_sequences")[CASES[case]["service"]]
            first = _night(sim, case, sequence, path, store)
            # The same read again between the nights: under the very conditions each night
            # met (a simulator holding every contact, the page cache as the last night left
            # it), where the read above met an idle machine.
            reads = [_read(path)]
            unchanged = []
            for _ in range(repeats):
                unchanged.append(_night(sim, case, sequence, path, store))
                reads.append(_read(path))
            size = _store_bytes(store)
            changed_reads = [_read(changed)]
            changed_night = _night(sim, case, sequence, changed, store)
            changed_reads.append(_read(changed))
        unchanged_wall = summary([night["wall_s"] for night in unchanged])
        beside = summary(
            [
                night["wall_s"] / ((before + after) / 2)
                for night, before, after in zip(unchanged, reads[:-1], reads[1:], strict=True)
            ]
        )
        entry["stores"][kind] = {
            "first_night": {
                **first,
                "rows_per_s": round(rows / first["wall_s"]),
                "over_read": round(first["wall_s"] / read_s, 2),
            },
            "unchanged": {
                "wall_s": unchanged_wall,
                "write_requests": max(night["write_requests"] for night in unchanged),
                "peak_rss_mb": max(night["peak_rss_mb"] for night in unchanged),
                "over_read": round(unchanged_wall["median"] / read_s, 2),
                "reads_beside_s": [round(read, 3) for read in reads],
                "over_read_beside": round(beside["median"], 2),
            },
            "changed": {
                **changed_night,
                "share": share,
                "over_read": round(changed_night["wall_s"] / read_s, 2),
                "reads_beside_s": [round(read, 3) for read in changed_reads],
                "over_read_beside": round(changed_night["wall_s"] / (sum(changed_reads) / 2), 2),
            },
            "state_bytes_per_key": round(size / rows, 1),
        }
    if "sqlite" in entry["stores"] and "postgresql" in entry["stores"]:
        entry["postgres_over_sqlite"] = _ratios(entry["stores"]["sqlite"], entry["stores"]["postgresql"])
    return entry


def _ratios(sqlite: dict[str, Any], postgresql: dict[str, Any]) -> dict[str, float]:
    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("nan")

    return {
        "first_night_wall": ratio(postgresql["first_night"]["wall_s"], sqlite["first_night"]["wall_s"]),
        "unchanged_wall": ratio(
            postgresql["unchanged"]["wall_s"]["median"], sqlite["unchanged"]["wall_s"]["median"]
        ),
        "changed_wall": ratio(postgresql["changed"]["wall_s"], sqlite["changed"]["wall_s"]),
        "first_night_rss": ratio(
            postgresql["first_night"]["peak_rss_mb"], sqlite["first_night"]["peak_rss_mb"]
        ),
    }


def nights(sizes: dict[str, list[int]], stores: list[str], repeats: int, workdir: Path) -> dict[str, Any]:
    """Every case at each of its sizes, on each store; with the machine's calibration."""
    figures: dict[str, Any] = {"targets": TARGETS, "calibration": calibration(repeats), "cases": {}}
    cpu = figures["calibration"]["cpu_loop_s"]["median"]
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(postgres(workdir)) if "postgresql" in stores else None
        for case, case_sizes in sizes.items():
            figures["cases"][case] = {
                # Each size says which run measured it: a later run may measure other sizes.
                str(rows): {
                    **case_nights(case, rows, stores, repeats, workdir, pg_url),
                    "cpu_loop_s": cpu,
                    "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                for rows in case_sizes
            }
    return figures


def merge_earlier(figures: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Keep the cases and sizes an earlier run measured and this one did not (each with its own
    run's CPU loop): one run per size of ten million rows, one table."""
    for case, sizes in earlier.get("cases", {}).items():
        for size, entry in sizes.items():
            now = figures["cases"].setdefault(case, {}).setdefault(size, entry)
            if now is entry:
                continue
            # A store this run did not measure keeps its earlier figures, with the read and
            # the moment they were measured against.
            for store, kept in entry["stores"].items():
                if store not in now["stores"]:
                    now["stores"][store] = {
                        "reference_read_s": entry["reference_read_s"],
                        "measured_at": entry.get("measured_at"),
                        **kept,
                    }


def verdict_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The report's rows: (measure, figure, target, verdict); judged at 1M rows and up."""
    rows: list[tuple[str, str, str, str]] = []
    cpu = figures["calibration"]["cpu_loop_s"]["median"]
    for case, sizes in figures["cases"].items():
        for size, entry in sorted(sizes.items(), key=lambda item: int(item[0])):
            rows += _size_rows(case, int(size), entry, entry.get("cpu_loop_s", cpu))
        rows += _scaling_rows(case, sizes)
    return rows


def _size_rows(case: str, n: int, entry: dict[str, Any], cpu: float) -> list[tuple[str, str, str, str]]:
    judged, large = n >= 1_000_000, n >= LARGE
    read = entry["reference_read_s"]["median"]
    label = f"9. {case} {n:,} rows"
    rows = [(f"{label}: reference read", f"{read:.2f} s (CPU loop {cpu:.2f} s)", "yardstick", "")]
    for store, s in entry["stores"].items():
        unchanged, first, changed = s["unchanged"], s["first_night"], s["changed"]
        limit = 2.0 if store == "sqlite" else 3.0 if large else None
        rows.append(
            (
                f"{label}, {store}: unchanged night",
                f"{over_read(unchanged):.2f}x {_which(unchanged)} ({unchanged['wall_s']['median']:.2f} s), "
                f"{unchanged['write_requests']} writes, {unchanged['peak_rss_mb']:.0f} MB",
                f"<= {limit}x, 0 writes" if limit else "see PostgreSQL over SQLite",
                _verdict(judged, over_read(unchanged) <= limit and not unchanged["write_requests"])
                if limit
                else "",
            )
        )
        share = f"{changed['share']:.1%}"
        rows.append(
            (
                f"{label}, {store}: {share} new or changed",
                f"{over_read(changed):.2f}x {_which(changed)}, {changed['write_requests']} writes, "
                f"{changed['peak_rss_mb']:.0f} MB",
                "0.1% at 10M: <= 2.5x" if store == "sqlite" else "(informative)",
                _verdict(large, over_read(changed) <= 2.5) if store == "sqlite" else "",
            )
        )
        rows.append(
            (
                f"{label}, {store}: first night",
                f"{first['rows_per_s']:,} rows/s ({first['over_read']:.1f}x the read), "
                f"{first['peak_rss_mb']:.0f} MB; state {s['state_bytes_per_key']:.0f} B/key",
                "10M: peak <= 1 GB" if large else "(informative)",
                _verdict(large, _peak(s) <= TARGETS["peak_rss_mb_10m"]) if large else "",
            )
        )
    ratios = entry.get("postgres_over_sqlite")
    if ratios:
        rows.append(
            (
                f"{label}: PostgreSQL over SQLite",
                ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()),
                "1M: each <= 1.5x" if not large else "(informative)",
                _verdict(judged and not large, max(ratios.values()) <= 1.5) if not large else "",
            )
        )
    return rows


def over_read(night: dict[str, Any]) -> float:
    """A night's wall over the reads beside it (measured just before and after it), or, for
    figures measured before those reads existed, over the run's one reference read."""
    return float(night.get("over_read_beside", night["over_read"]))


def _which(night: dict[str, Any]) -> str:
    return "the reads beside it" if "over_read_beside" in night else "the read"


def _peak(store: dict[str, Any]) -> float:
    """The highest peak RSS of a store's nights."""
    return float(max(store[night]["peak_rss_mb"] for night in ("first_night", "unchanged", "changed")))


def _scaling_rows(case: str, sizes: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """10M against 1M, per store: first-night rows/s and peak RSS."""
    small, large = sizes.get(str(1_000_000)), sizes.get(str(LARGE))
    if small is None or large is None:
        return []
    rows = []
    for store in large["stores"]:
        if store not in small["stores"]:
            continue
        s1, s10 = small["stores"][store], large["stores"][store]
        speed = s10["first_night"]["rows_per_s"] / s1["first_night"]["rows_per_s"]
        rss = _peak(s10) / _peak(s1)
        rows.append(
            (
                f"9. {case}, {store}: 10M against 1M",
                f"first-night rows/s {speed:.2f}x, peak RSS {rss:.2f}x",
                "rows/s >= 0.9x, RSS <= 1.5x",
                _verdict(True, speed >= 0.9 and rss <= 1.5),
            )
        )
    return rows


def _verdict(judged: bool, met: bool) -> str:
    if not judged:
        return "(informative)"
    return "met" if met else "MISSED"
