"""The benchmarks run: quick mode, as a subprocess. Figures are not asserted, only produced."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine
from bench.harness import SimProcess, export, run_worker
from bench.nights import merge_earlier
from bench.scenarios import _spec

ROOT = Path(__file__).resolve().parents[1]


def _bench(output: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python -m bench --quick ARGS``; what it printed and the figures it wrote."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args, "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(output.read_text())


def test_bench_quick_mode_runs_and_writes_its_json(tmp_path):
    _, figures = _bench(tmp_path / "bench.json", "--only", "requests", "throughput")
    assert "machine" in figures
    assert "requests_per_1000" in figures["scenarios"]
    # The layout the report and the README read: every case, its sizes and its re-run.
    cases = figures["scenarios"]["throughput"]["cases"]
    assert set(cases) == {"reply_emails", "reply_ids", "whippy"}
    for case in cases.values():
        assert case["sizes"]
        assert {"unchanged", "one_percent"} <= set(case["rerun"])


def test_bench_nights_measure_each_night_against_the_reference_read(tmp_path):
    done, figures = _bench(
        tmp_path / "nights.json", "--only", "nights", "--cases", "reply_emails", "--stores", "sqlite"
    )
    nights = figures["scenarios"]["nights"]
    assert nights["calibration"]["cpu_loop_s"]["median"] > 0
    entry = nights["cases"]["reply_emails"]["2000"]
    assert entry["reference_read_s"]["median"] > 0
    sqlite = entry["stores"]["sqlite"]
    # The second night of the same export writes nothing; the next night only its changes.
    assert sqlite["unchanged"]["write_requests"] == 0
    assert 0 < sqlite["changed"]["write_requests"] < sqlite["first_night"]["write_requests"]
    assert sqlite["changed"]["share"] == 0.01  # 0.1% from 10M rows
    # latest.json's readers find the machine's yardsticks beside its description.
    assert figures["calibration"]["cpu_loop_s"]["median"] > 0
    assert sqlite["unchanged"]["over_read"] > 0
    # Each later night is judged against the same read measured just before and just after it.
    unchanged, changed = sqlite["unchanged"], sqlite["changed"]
    assert len(unchanged["reads_beside_s"]) == unchanged["wall_s"]["n"] + 1
    assert changed["over_read_beside"] == pytest.approx(
        changed["wall_s"] / (sum(changed["reads_beside_s"]) / 2), rel=0.05
    )
    assert "x the reads beside it" in done.stdout
    assert sqlite["state_bytes_per_key"] > 0
    assert "9. reply_emails 2,000 rows, sqlite: unchanged night" in done.stdout


def test_a_run_of_one_store_keeps_the_other_stores_earlier_figures():
    earlier: dict[str, Any] = {
        "cases": {
            "whippy": {
                "10000000": {
                    "reference_read_s": {"median": 40.0},
                    "measured_at": "earlier",
                    "stores": {"sqlite": {"unchanged": {"over_read": 1.7}}},
                }
            }
        }
    }
    figures: dict[str, Any] = {
        "cases": {
            "whippy": {
                "10000000": {
                    "reference_read_s": {"median": 35.0},
                    "stores": {"postgresql": {"unchanged": {"over_read": 2.1}}},
                }
            }
        }
    }
    merge_earlier(figures, earlier)
    stores = figures["cases"]["whippy"]["10000000"]["stores"]
    assert stores["postgresql"] == {"unchanged": {"over_read": 2.1}}
    assert stores["sqlite"]["unchanged"] == {"over_read": 1.7}
    assert stores["sqlite"]["reference_read_s"] == {"median": 40.0}
    assert stores["sqlite"]["measured_at"] == "earlier"


def test_a_bench_stopped_with_sigterm_stops_its_postgresql(tmp_path):
    # A TMPDIR the server's user can reach (pytest's own is private to root), so the bench's
    # working directory and the cluster the script keeps for it are in one place only this
    # test looks at.
    tmp = Path(tempfile.mkdtemp(prefix="bench-sigterm-", dir="/tmp"))
    tmp.chmod(0o755)
    errors = tmp_path / "stderr"
    command = [sys.executable, "-m", "bench", "--quick", "--only", "nights", "--stores", "postgresql"]
    with errors.open("w") as stderr:
        bench = subprocess.Popen(
            [*command, "--output", str(tmp_path / "bench.json")],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp.glob("**/postmaster.pid")):
            assert bench.poll() is None, errors.read_text()[-3000:]
            assert time.monotonic() < deadline, "the bench's PostgreSQL did not start"
            time.sleep(0.2)
        pid = int(next(tmp.glob("**/postmaster.pid")).read_text().split()[0])
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=120) == 128 + signal.SIGTERM
        assert not Path(f"/proc/{pid}").exists(), "the bench left its PostgreSQL running"
        assert not list(tmp.iterdir()), f"the bench left {sorted(p.name for p in tmp.iterdir())}"
    finally:
        if bench.poll() is None:
            bench.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_bench_night_is_saved_as_the_operator_saves_it(tmp_path):
    # The operator saves every finished run; the next night reads when to read the enrolled
    # pass from it. A bench that did not save its nights made each later one count the state's
    # keys (3 s at ten million), which no operator's night does.
    state = tmp_path / "state.db"
    with SimProcess() as sim:
        sequence = sim.call("new_sequences")["reply"]
        run_worker("bench.worker", _spec(sim, "reply", sequence, export(2_000), state))
    engine = create_state_engine(f"sqlite:///{state}")
    scope = Scope("reply", "bench_reply", str(sequence))
    assert SyncState(engine, scope).last_run_rows() == 2_000
