"""Run the benchmarks: ``python -m bench [--quick]`` (``make bench`` runs the full set)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.harness import ROOT, machine
from bench.nights import merge_earlier, nights
from bench.report import draw_chart, table
from bench.scenarios import (
    CASES,
    baseline,
    multi_worker,
    rate_limit_fit,
    requests_per_thousand,
    throughput,
    workdir,
)
from bench.xcom_results import BACKENDS, xcom_results

RESULTS = ROOT / "bench" / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="throughput sizes of every case (default 100000 1000000); --ids-sizes and "
        "--whippy-sizes override it for those cases",
    )
    parser.add_argument("--ids-sizes", type=int, nargs="*", help="throughput sizes, Reply with contact ids")
    parser.add_argument("--whippy-sizes", type=int, nargs="*", help="throughput sizes, Whippy")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        help="throughput cases to run (default all; an empty --ids-sizes or --whippy-sizes also skips one)",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (default 3)")
    parser.add_argument("--request-rows", type=int, help="rows for requests per 1,000 (default 12000)")
    parser.add_argument("--baseline-rows", type=int, help="rows for the hand-written loop (default 10000)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["requests", "throughput", "baseline", "ratelimits", "multiworker", "xcom", "nights"],
        help="run only these",
    )
    parser.add_argument(
        "--nights-sizes",
        type=int,
        nargs="+",
        help="sizes for the nights against the reference read (default 1000000; 10000000 is the "
        "issue's large export, cached in bench/.cache, some 2 GB)",
    )
    parser.add_argument(
        "--stores",
        nargs="+",
        choices=["sqlite", "postgresql"],
        help="sync-state stores for the nights (default both; PostgreSQL started by the bench)",
    )
    parser.add_argument("--xcom-rows", type=int, help="rows for the result through XCom (default 1000000)")
    parser.add_argument("--output", type=Path, help="JSON to write (default bench/results/latest.json)")
    return parser


def _stop(signum: int, _frame: object) -> None:
    # A bench stopped with SIGTERM (kill, a CI timeout) unwinds as on Ctrl-C: the servers it
    # started (simulators, its PostgreSQL) stop and its working directory goes.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    args = _parser().parse_args(argv)
    quick = args.quick
    sizes = args.sizes or ([2_000, 5_000] if quick else [100_000, 1_000_000])
    # Quick mode runs the other cases at one size: each size costs a worker process or two.
    others = [max(sizes)] if quick and not args.sizes else sizes
    case_sizes = {
        "reply_emails": sizes,
        "reply_ids": others if args.ids_sizes is None else args.ids_sizes,
        "whippy": others if args.whippy_sizes is None else args.whippy_sizes,
    }
    case_sizes = {case: n for case, n in case_sizes.items() if case in (args.cases or CASES)}
    repeats = args.repeats or (1 if quick else 3)
    # 12,000: whole batches for both services (1,000 for Reply, 4,000 for Whippy), so the
    # figure is the API's cost, not the rounding of a last, part-filled batch.
    request_rows = args.request_rows or (2_000 if quick else 12_000)
    baseline_rows = args.baseline_rows or (300 if quick else 10_000)
    output = args.output or RESULTS / ("quick.json" if quick else "latest.json")
    xcom_rows = args.xcom_rows or (2_000 if quick else 1_000_000)
    nights_sizes = args.nights_sizes or ([2_000] if quick else [1_000_000])
    stores = args.stores or ["sqlite", "postgresql"]
    wanted = set(
        args.only or ["requests", "throughput", "baseline", "ratelimits", "multiworker", "xcom", "nights"]
    )
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
    durations: dict[str, float] = results.setdefault("duration_by_scenario_s", {})

    def run(key: str, title: str, scenario: Callable[[], dict[str, Any]]) -> None:
        print(f"== {title}", flush=True)
        begun = time.perf_counter()
        scenarios[key] = scenario()
        durations[key] = round(time.perf_counter() - begun, 1)
        print(f"   ({durations[key]:.0f} s)", flush=True)

    try:
        # In the brief's priority order: 1, 3 + 4 + 5, 6, then 2.
        if "requests" in wanted:
            run(
                "requests_per_1000",
                "1. requests per 1,000 new contacts",
                lambda: requests_per_thousand(request_rows, work),
            )
        if "throughput" in wanted:
            run(
                "throughput",
                "3-5. throughput, memory, nightly re-run",
                lambda: throughput(case_sizes, repeats, work, profile=not args.no_profile),
            )
        if "baseline" in wanted:
            run("baseline", "6. hand-written baseline", lambda: baseline(baseline_rows, repeats, work))
        if "ratelimits" in wanted:
            run("rate_limit_fit", "2. fit to the rate limits", lambda: rate_limit_fit(quick, work))
        if "multiworker" in wanted:
            run(
                "multi_worker",
                "7. several workers on one account",
                lambda: multi_worker(quick, work),
            )
        if "xcom" in wanted:
            run(
                "xcom_results",
                "8. the result through XCom, both backends",
                lambda: xcom_results(xcom_rows, list(BACKENDS), threshold=1_000_000),
            )
        if "nights" in wanted:
            run(
                "nights",
                "9. a night against reading the export, each state store",
                lambda: nights(
                    {
                        case: nights_sizes
                        for case in ("reply_emails", "whippy")
                        if case in (args.cases or CASES)
                    },
                    stores,
                    repeats,
                    work,
                ),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    if "nights" in scenarios:
        # The machine's yardsticks, beside its description, for every absolute figure.
        results["calibration"] = scenarios["nights"]["calibration"]
    if output.exists():
        # Scenarios this run did not measure keep their figures, and say which run made them.
        before = json.loads(output.read_text())
        earlier = before.get("scenarios", {})
        kept: dict[str, Any] = results.setdefault("kept_from_earlier_runs", {})
        if "nights" in scenarios and "nights" in earlier:
            merge_earlier(scenarios["nights"], earlier["nights"])
        for key in sorted(set(earlier) - set(scenarios)):
            scenarios[key] = earlier[key]
            kept[key] = before.get("kept_from_earlier_runs", {}).get(key) or {
                "generated_at": before.get("generated_at"),
                "command": before.get("command"),
            }
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    chart = draw_chart(results, output.with_suffix(".png"))
    print(f"\nFigures: {output}" + (f"; chart: {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
