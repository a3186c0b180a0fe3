"""Drive the e2e deployment: ``python -m tests.e2e --executor local --postgres URL``.

Run by ``scripts/e2e.sh`` (``make e2e``, ``make e2e-celery``), which starts PostgreSQL first
and stops it after. This driver starts the simulators and Airflow, runs the checks, prints
the figures (also written to ``WORKDIR/figures.json``) and stops every process it started,
whatever happens. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from airflow_provider_sequences.testing.crm import crm_frame
from tests.e2e.checks import Outcome, fan_out, overlap
from tests.e2e.deployment import PARALLELISM, Deployment
from tests.e2e.processes import ROOT, Processes
from tests.e2e.simulators import Simulators


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e", description=__doc__)
    parser.add_argument("--executor", choices=["local", "celery"], default="local")
    parser.add_argument(
        "--postgres", required=True, help="URL of the cluster (scripts/postgres.sh prints it)"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".e2e" / "local")
    parser.add_argument("--time-scale", type=float, default=6.0, help="simulated seconds per real second")
    parser.add_argument("--reply-rows", type=int, default=2500, help="rows per Reply shard (4 shards)")
    parser.add_argument("--whippy-rows", type=int, default=2000, help="rows per Whippy shard (2 shards)")
    parser.add_argument(
        "--overlap-rows", type=int, default=1000, help="rows of the overlapping DAG's exports"
    )
    return parser


def write_inputs(args: argparse.Namespace, sims: Simulators) -> Path:
    """The shards as CSV files and the DAGs' config; returns the config's path."""
    data = args.workdir / "data"
    data.mkdir(parents=True, exist_ok=True)

    def shard(name: str, rows: int, first_id: int) -> str:
        path = data / f"{name}.csv"
        crm_frame(rows, seed=first_id, first_id=first_id).to_csv(path, index=False)
        return str(path)

    config = {
        "reply_sequence": sims.reply_sequence,
        "whippy_sequence": sims.whippy_sequence,
        "whippy_channel": sims.whippy_channel,
        # Small batches, so that the documented limits bind: the floor is then the rate limit's.
        "reply_batch": 100,
        "whippy_batch": 200,
        "reply_shards": [shard(f"reply-{i}", args.reply_rows, 100_000 + i * 10_000) for i in range(4)],
        "whippy_shards": [shard(f"whippy-{i}", args.whippy_rows, 200_000 + i * 10_000) for i in range(2)],
        "overlap_reply": shard("overlap-reply", args.overlap_rows, 300_000),
        "overlap_whippy": shard("overlap-whippy", args.overlap_rows, 400_000),
        # Sending lasts long enough under the limits for the two runs to meet.
        "overlap_reply_batch": 20,
        "overlap_whippy_batch": 100,
    }
    path: Path = args.workdir / "e2e_config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _terminate(signum: int, frame: Any) -> NoReturn:
    # SIGTERM (from scripts/e2e.sh's trap) unwinds through the finally that stops everything.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    outcome = Outcome()
    logs = args.workdir / "logs"
    print(f"== e2e with the {args.executor} executor; logs in {logs}", flush=True)
    with Processes(logs, args.workdir / "pids") as processes:
        # Whippy's background work takes 8 s: the deferred tasks then really wait in the
        # triggerer, and a trigger firing at once does not meet Airflow's race between a
        # deferral's stale executor event and the resumed task (apache/airflow#71580).
        sims = Simulators.start(processes, args.time_scale, processing_delay=8.0)
        print(
            f"   simulators on {sims.reply_url} and {sims.whippy_url}, time scale {args.time_scale:g}",
            flush=True,
        )
        config = write_inputs(args, sims)
        deployment = Deployment(args.executor, args.postgres, args.workdir, processes)
        deployment.start(sims, config)
        for check in (fan_out, overlap):
            try:
                check(deployment, sims, outcome)
            except Exception as error:  # one check's crash must not hide the others' figures
                outcome.check(f"{check.__name__} ran to the end", False, f"{type(error).__name__}: {error}")
        outcome.figures["startup_s"] = deployment.timings
    outcome.figures.update(
        executor=args.executor,
        parallelism=PARALLELISM,
        time_scale=args.time_scale,
        total_s=round(time.perf_counter() - started, 1),
        checks=[{"check": n, "passed": ok, "detail": d} for n, ok, d in outcome.results],
    )
    (args.workdir / "figures.json").write_text(json.dumps(outcome.figures, indent=2, default=str))
    failed = [n for n, ok, _ in outcome.results if not ok]
    passed = len(outcome.results) - len(failed)
    print(
        f"== e2e ({args.executor}): {passed} of {len(outcome.results)} checks passed "
        f"in {outcome.figures['total_s']:.0f} s; figures in {args.workdir / 'figures.json'}",
        flush=True,
    )
    for name in failed:
        print(f"   FAILED: {name}", flush=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
