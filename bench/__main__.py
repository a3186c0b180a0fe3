"""Run the benchmarks: ``python -m bench [--quick]`` (``make bench`` runs the full set)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.harness import ROOT, machine
from bench.report import draw_chart, table
from bench.scenarios import baseline, rate_limit_fit, requests_per_thousand, throughput, workdir

RESULTS = ROOT / "bench" / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    parser.add_argument("--sizes", type=int, nargs="+", help="throughput sizes (default 100000 1000000)")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (default 3)")
    parser.add_argument("--request-rows", type=int, help="rows for requests per 1,000 (default 10000)")
    parser.add_argument("--baseline-rows", type=int, help="rows for the hand-written loop (default 10000)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["requests", "throughput", "baseline", "ratelimits"],
        help="run only these",
    )
    parser.add_argument("--output", type=Path, help="JSON to write (default bench/results/latest.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quick = args.quick
    sizes = args.sizes or ([2_000, 5_000] if quick else [100_000, 1_000_000])
    repeats = args.repeats or (1 if quick else 3)
    request_rows = args.request_rows or (2_000 if quick else 10_000)
    baseline_rows = args.baseline_rows or (300 if quick else 10_000)
    output = args.output or RESULTS / ("quick.json" if quick else "latest.json")
    wanted = set(args.only or ["requests", "throughput", "baseline", "ratelimits"])
    work = workdir()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "scenarios": {},
    }
    scenarios = results["scenarios"]
    try:
        # In the brief's priority order: 1, 3 + 4 + 5, 6, then 2.
        if "requests" in wanted:
            print("== 1. requests per 1,000 new contacts", flush=True)
            scenarios["requests_per_1000"] = requests_per_thousand(request_rows, work)
        if "throughput" in wanted:
            print("== 3-5. throughput, memory, nightly re-run", flush=True)
            scenarios["throughput"] = throughput(sizes, repeats, work, profile=not args.no_profile)
        if "baseline" in wanted:
            print("== 6. hand-written baseline", flush=True)
            scenarios["baseline"] = baseline(baseline_rows, repeats, work)
        if "ratelimits" in wanted:
            print("== 2. fit to the rate limits", flush=True)
            scenarios["rate_limit_fit"] = rate_limit_fit(quick, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    chart = draw_chart(results, output.with_suffix(".png"))
    print(f"\nFigures: {output}" + (f"; chart: {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
