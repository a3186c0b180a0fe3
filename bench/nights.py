"""Scenario 9: what a night costs against reading the export, on each sync-state store.

For each case and size: the reference read (pandas reading the same export in the same chunks,
nothing else), then on each store a first night, the same export again (unchanged) and the
next night's export (1% new or changed), each in a fresh worker process. The ratios to the
reference hold from machine to machine where absolute rows/s do not. PostgreSQL runs on
loopback, started by the bench with ``scripts/postgres.sh`` and stopped after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.harness import ROOT, SimProcess, export, run_worker, summary
from bench.scenarios import CASES, _spec

#: The issue's targets, as ratios to the reference read or to the SQLite figure.
TARGETS = {
    "unchanged_over_read": 2.0,
    "one_percent_over_read": 2.5,
    "postgres_over_sqlite": 1.5,
    "postgres_unchanged_over_read_10m": 3.0,
}


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[str]:
    """A PostgreSQL cluster of the bench's own on a free loopback port; its URL."""
    data = workdir / "pg"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = ROOT / "scripts" / "postgres.sh"
    bash = shutil.which("bash") or "/bin/bash"
    env = {**os.environ, "PGPORT": str(port)}
    done = subprocess.run(  # noqa: S603 - the repository's own script
        [bash, str(script), "start", str(data)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/postgres.sh could not start PostgreSQL:\n{done.stderr[-2000:]}")
    try:
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
    sim: SimProcess, case: str, rows: int, stores: list[str], repeats: int, workdir: Path, pg_url: str | None
) -> dict[str, Any]:
    """One case at one size: the reference read, then three nights on each store."""
    path, changed = export(rows), export(rows, night_two=True)
    reference = reference_read(path, repeats)
    read_s = reference["median"]
    entry: dict[str, Any] = {"rows": rows, "reference_read_s": reference, "stores": {}}
    for kind in stores:
        if CASES[case]["service"] == "whippy":
            # Whippy matches contacts across the organization: each store's first night is new.
            sim.accounts["whippy"]["api_key"] = sim.call("new_whippy_organization")["api_key"]
        sequence = sim.call("new_sequences")[CASES[case]["service"]]
        store = _store(kind, workdir, pg_url, f"bench_{case}_{rows}_{kind}")
        first = _night(sim, case, sequence, path, store)
        unchanged = [_night(sim, case, sequence, path, store) for _ in range(repeats)]
        size = _store_bytes(store)
        one_percent = _night(sim, case, sequence, changed, store)
        unchanged_wall = summary([night["wall_s"] for night in unchanged])
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
            },
            "one_percent": {**one_percent, "over_read": round(one_percent["wall_s"] / read_s, 2)},
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
        "one_percent_wall": ratio(postgresql["one_percent"]["wall_s"], sqlite["one_percent"]["wall_s"]),
        "first_night_rss": ratio(
            postgresql["first_night"]["peak_rss_mb"], sqlite["first_night"]["peak_rss_mb"]
        ),
    }


def nights(sizes: dict[str, list[int]], stores: list[str], repeats: int, workdir: Path) -> dict[str, Any]:
    """Every case at each of its sizes, on each store; with the machine's calibration."""
    figures: dict[str, Any] = {"targets": TARGETS, "calibration": calibration(repeats), "cases": {}}
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(postgres(workdir)) if "postgresql" in stores else None
        for case, case_sizes in sizes.items():
            with SimProcess() as sim:
                figures["cases"][case] = {
                    str(rows): case_nights(sim, case, rows, stores, repeats, workdir, pg_url)
                    for rows in case_sizes
                }
    return figures


def verdict_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The report's rows: (measure, figure, target, verdict); judged at 1M rows and up."""
    rows: list[tuple[str, str, str, str]] = []
    cpu = figures["calibration"]["cpu_loop_s"]["median"]
    for case, sizes in figures["cases"].items():
        for size, entry in sizes.items():
            n = int(size)
            judged = n >= 1_000_000
            read = entry["reference_read_s"]["median"]
            label = f"9. {case} {n:,} rows"
            rows.append((f"{label}: reference read", f"{read:.2f} s (CPU loop {cpu:.2f} s)", "yardstick", ""))
            for store, s in entry["stores"].items():
                unchanged = s["unchanged"]
                rows.append(
                    (
                        f"{label}, {store}: unchanged night",
                        f"{unchanged['over_read']:.2f}x the read ({unchanged['wall_s']['median']:.2f} s), "
                        f"{unchanged['write_requests']} writes",
                        "<= 2.0x, 0 writes" if store == "sqlite" else "see PostgreSQL over SQLite",
                        _verdict(judged, unchanged["over_read"] <= 2.0) if store == "sqlite" else "",
                    )
                )
                first, changed = s["first_night"], s["one_percent"]
                rows.append(
                    (
                        f"{label}, {store}: first night, 1% night",
                        f"{first['rows_per_s']:,} rows/s ({first['over_read']:.1f}x), "
                        f"{first['peak_rss_mb']:.0f} MB; 1%: {changed['over_read']:.2f}x, "
                        f"{changed['write_requests']} writes; state {s['state_bytes_per_key']:.0f} B/key",
                        "0.1% at 10M <= 2.5x (this night: 1%)",
                        _verdict(n >= 10_000_000, changed["over_read"] <= 2.5),
                    )
                )
            ratios = entry.get("postgres_over_sqlite")
            if ratios:
                worst = max(ratios.values())
                rows.append(
                    (
                        f"{label}: PostgreSQL over SQLite",
                        ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()),
                        "each <= 1.5x",
                        _verdict(judged, worst <= 1.5),
                    )
                )
    return rows


def _verdict(judged: bool, met: bool) -> str:
    if not judged:
        return "(informative)"
    return "met" if met else "MISSED"
