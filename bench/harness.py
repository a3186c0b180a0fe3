"""Plumbing shared by the scenarios: the simulator process, worker runs, exports, the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

from airflow_provider_sequences.testing.crm import crm_frame, write_crm_sqlite

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"


class SimProcess:
    """The simulators in a child process (``bench.simserver``), spoken to over pipes."""

    def __init__(self, *, time_scale: float = 1.0, rate_limits: bool = False) -> None:
        command = [sys.executable, "-m", "bench.simserver", "--time-scale", str(time_scale)]
        if rate_limits:
            command.append("--rate-limits")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.accounts: dict[str, Any] = self._read()

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the simulator process ended unexpectedly")
        return json.loads(line)

    def call(self, cmd: str, **args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, RuntimeError):
                self.call("quit")
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def run_worker(module: str, spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run ``python -m <module> SPEC`` in a fresh process; its ``BENCH-RESULT`` line, parsed."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            result: dict[str, Any] = json.loads(line[len("BENCH-RESULT ") :])
            return result
    raise RuntimeError(f"{module} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def run_workers(
    module: str, specs: list[dict[str, Any]], *, airflow_home: Path, timeout: float = 3600
) -> list[dict[str, Any]]:
    """Run ``python -m <module> SPEC`` once per spec, all at the same time; their results, in
    order. A worker that failed gives ``{"error": ...}`` rather than stopping the others.

    ``airflow_home``: the workers' ``AIRFLOW_HOME``, where the machine's shared rate budget
    lives by default: the bench's own, not that of whatever else runs on the machine."""
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    processes = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for spec in specs
    ]
    results: list[dict[str, Any]] = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        lines = [line for line in out.splitlines() if line.startswith("BENCH-RESULT ")]
        if lines:
            results.append(json.loads(lines[-1][len("BENCH-RESULT ") :]))
        else:
            results.append({"error": f"exit {process.returncode}: {err[-1500:]}"})
    return results


def export(
    rows: int, *, seed: int = 7, bad_share: float = 0.02, night_two: bool = False, changed_share: float = 0.01
) -> Path:
    """A SQLite CRM export of ``rows`` rows, cached under ``bench/.cache``.

    ``night_two``: the next night's export: the same rows with half of ``changed_share`` of
    them changed (a new company) and as many rows appended (see ``night_two_frame``).
    """
    suffix = ("-night2" + ("" if changed_share == 0.01 else f"-c{changed_share}")) if night_two else ""
    # v2: phones unique past 8M ids (v1 repeated them, so 20% of a 10M export shared one).
    path = CACHE / f"crm-v2-{rows}-s{seed}-b{bad_share}{suffix}.db"
    if path.exists():
        return path
    frame = (
        night_two_frame(rows, seed, bad_share, changed_share=changed_share)
        if night_two
        else crm_frame(rows, seed=seed, bad_share=bad_share)
    )
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    write_crm_sqlite(tmp, frame)
    tmp.rename(path)
    return path


def night_two_frame(
    rows: int, seed: int, bad_share: float, first_id: int = 1, *, changed_share: float = 0.01
) -> pd.DataFrame:
    """Night one's rows (``crm_frame(rows, seed, bad_share, first_id)``), half of
    ``changed_share`` of them with a new company, and as many new rows appended after them:
    ``changed_share`` new or changed (1% by default)."""
    frame = crm_frame(rows, seed=seed, bad_share=bad_share, first_id=first_id)
    share = max(round(rows * changed_share / 2), 1)
    changed = frame.index[:: max(rows // share, 1)][:share]
    frame.loc[changed, "company"] = "Changed Corp"
    new = crm_frame(share, seed=seed + 1, bad_share=0.0, first_id=first_id + rows + 10_000_000)
    return pd.concat([frame, new], ignore_index=True)


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in (
        "airflow-provider-sequences",
        "apache-airflow",
        "pandas",
        "pyarrow",
        "numpy",
        "requests",
        "SQLAlchemy",
        "fastapi",
        "uvicorn",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_mb": memory_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
