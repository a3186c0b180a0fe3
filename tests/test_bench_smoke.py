"""The benchmarks run: quick mode, as a subprocess. Figures are not asserted, only produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_mode_runs_and_writes_its_json(tmp_path):
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "requests",
            "throughput",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(output.read_text())
    assert "machine" in figures
    assert "requests_per_1000" in figures["scenarios"]
    # The layout the report and the README read: every case, its sizes and its re-run.
    cases = figures["scenarios"]["throughput"]["cases"]
    assert set(cases) == {"reply_emails", "reply_ids", "whippy"}
    for case in cases.values():
        assert case["sizes"]
        assert {"unchanged", "one_percent"} <= set(case["rerun"])
