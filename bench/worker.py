"""One sync through the whole engine, in a fresh process: ``python -m bench.worker SPEC_JSON``.

Reads a SQLite CRM export with ``read_sql_chunks``, then prepare, plan, push (to a simulator
in another process) and record on a SQLite sync state, exactly as the operators wire it but
without Airflow's task machinery. Prints one JSON line: wall and CPU seconds of the sync, peak
RSS of this process, the run's stats, and (with ``"profile": true``) where the time went.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import resource
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

#: Functions whose cumulative time makes a stage (file name suffix, space-separated function
#: names); a function's calls are not nested in another's.
STAGES: dict[str, tuple[str, str]] = {
    "read (read_sql_chunks)": ("sync/source/sql.py", "_read_sql"),
    "fingerprint rows": ("sync/chunk.py", "fingerprints"),
    "prepare (all passes)": ("sync/prepare.py", "prepare_chunk"),
    "plan (incl. state lookup)": ("sync/plan.py", "plan"),
    "state lookup": ("sync/state/scoped.py", "lookup"),
    "push (adapter + HTTP)": ("sync/send.py", "push"),
    "HTTP wait (hook.request)": ("hooks/transport.py", "request"),
    "record (state writes)": ("sync/state/store.py", "record record_and_mark"),
    "confirm (read-back)": ("sync/record.py", "confirm"),
    "finish (result from state)": ("sync/record.py", "finish"),
}

UNLIMITED = 1_000_000_000
REPLY_COLUMNS = {
    "email": "email",
    "first_name": "firstName",
    "last_name": "lastName",
    "company": "company",
    "job_title": "title",
    "phone": "phone",
    "city": "city",
    "country": "country",
    "tier": "customFields.Tier",
}
WHIPPY_COLUMNS = {
    "crm_id": "external_id",
    "phone": "phone",
    "email": "email",
    "first_name": "name",
    "city": "address.city",
    "country": "address.country",
}


def connection_extra(spec: dict[str, Any]) -> dict[str, Any]:
    """Client-side limits: effectively none, or the documented ones on a time-scaled clock."""
    if spec.get("time_scale"):
        return {"rate_limit_time_scale": spec["time_scale"]}
    if spec["service"] == "reply":
        return {"requests_per_minute": UNLIMITED, "requests_per_hour": UNLIMITED}
    return {"sequence_writes_per_minute": UNLIMITED, "requests_per_second": UNLIMITED}


def build_run(spec: dict[str, Any]) -> Any:
    from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
    from airflow_provider_sequences.sync.prepare import PrepareSpec
    from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine
    from airflow_provider_sequences.testing import connection_env_var, connection_json

    conn_id = f"bench_{spec['service']}"
    os.environ[connection_env_var(conn_id)] = connection_json(
        spec["service"], spec["url"], spec["api_key"], **connection_extra(spec)
    )
    adapter: Any
    id_column = None
    if spec["service"] == "reply":
        from airflow_provider_sequences.adapters.reply import ReplyAdapter
        from airflow_provider_sequences.hooks.reply import ReplyHook

        with_ids = spec["mode"] == "ids"
        adapter = ReplyAdapter(ReplyHook(conn_id), int(spec["sequence_id"]), with_contact_ids=with_ids)
        column_map = REPLY_COLUMNS
        key_column = "reply_id" if with_ids else "email"
        id_column = "reply_id" if with_ids else None
    else:
        from airflow_provider_sequences.adapters.whippy import WhippyAdapter
        from airflow_provider_sequences.hooks.whippy import WhippyHook

        adapter = WhippyAdapter(WhippyHook(conn_id), str(spec["sequence_id"]), poll_interval=0.2)
        column_map = WHIPPY_COLUMNS
        key_column = "crm_id"
    adapter.preflight()
    if spec["service"] == "whippy":
        # As the operator does: the step's count before the first write, so the read-back
        # reads only the contacts past it.
        adapter.step_total()
    prepare = PrepareSpec(
        column_map=column_map,
        key_column=key_column,
        rules=adapter.rules,
        default_region="US",
        id_column=id_column,
    )
    state = SyncState(
        # ``state_url``: another state database (PostgreSQL); else a SQLite file at ``state``.
        create_state_engine(spec.get("state_url") or f"sqlite:///{spec['state']}"),
        Scope(adapter.service, conn_id, str(spec["sequence_id"])),
    )
    options = SyncOptions(
        batch_size=int(spec.get("batch_size") or adapter.max_batch_size),
        # Whippy gives no sign for a contact it ignores, so a run waits this long for any it
        # never shows. The exports' rows sharing a phone are refused before sending
        # (sharedContact), so nothing should be waited for: 120 s (not the engine's 600) only
        # covers the simulator's background work falling behind on a busy machine.
        enrollment_timeout=float(spec.get("enrollment_timeout", 120)),
    )
    return SyncRun(adapter, prepare, state, spec["run_id"], options)


def sync(spec: dict[str, Any], run: Any) -> dict[str, Any]:
    from airflow_provider_sequences.sync.source import read_sql_chunks

    connection = sqlite3.connect(spec["export"])
    chunks = read_sql_chunks(
        connection, "SELECT * FROM crm_contacts", chunk_size=int(spec.get("chunk_size", 20_000))
    )
    started = time.perf_counter()
    run.run(chunks)
    pushed = time.perf_counter()
    run.confirm()
    confirmed = time.perf_counter()
    result = run.finish()
    connection.close()
    stats = dict(result.stats)
    if run.writes_state:
        # As the operator does after every run: the next night reads when to read the enrolled
        # pass from it (the last finished run's rows), instead of counting the state's keys.
        run.state.save_run(run.run_id, stats, finished=True)
    return {
        "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))},
        "added": result.added_count,
        "not_processed": result.not_processed_count,
        # Where the wall went, without a profiler's overhead: read to push (``run``), the
        # read-back (``confirm``: Whippy confirms in the background), and the result.
        "phase_wall_s": {
            "run": round(pushed - started, 3),
            "confirm": round(confirmed - pushed, 3),
            "finish": round(time.perf_counter() - confirmed, 3),
        },
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux keeps ``ru_maxrss`` across ``exec``: a worker forked from a bench process that had
    grown (seeding a million contacts) would report the parent's size. ``VmHWM`` belongs to
    the process's own memory map, made new by ``exec``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_times(profile: cProfile.Profile, sender: cProfile.Profile, total: float) -> dict[str, Any]:
    """Stage times of both threads together: they overlap, so stages may add up past the wall."""
    stats = pstats.Stats(profile)
    if sender.getstats():
        stats.add(sender)
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    stages: dict[str, float] = {}
    for name, (suffix, function) in STAGES.items():
        stages[name] = round(
            sum(
                v[3]
                for (file, _, func), v in table.items()
                if func in function.split() and file.endswith(suffix)
            ),
            3,
        )
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:15]
    return {
        "profiled_wall_s": round(total, 3),
        "stages_cumulative_s": stages,
        "top_own_time": [
            {"function": f"{os.path.basename(file)}:{line}:{func}", "own_s": round(v[2], 3), "calls": v[1]}
            for (file, line, func), v in top
        ],
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    # Set-up (imports, the connection, the adapter's preflight reads) is not the sync's time.
    run = build_run(spec)
    cpu_before, started = _cpu(), time.perf_counter()
    profile = cProfile.Profile() if spec.get("profile") else None
    sender_profile = cProfile.Profile()
    if profile is not None and sys.version_info < (3, 12):
        # Before 3.12 cProfile sees one thread: the engine sends (and records answers) in its
        # own. From 3.12 it profiles through sys.monitoring, which sees every thread and allows
        # one profiler at a time.
        push_and_record = run.sender.push_and_record

        def profiled(*args: Any) -> Any:
            sender_profile.enable()
            try:
                return push_and_record(*args)
            finally:
                sender_profile.disable()

        run.sender.push_and_record = profiled  # type: ignore[method-assign]
    if profile is not None:
        profile.enable()
    outcome = sync(spec, run)
    if profile is not None:
        profile.disable()
    wall = time.perf_counter() - started
    outcome.update(
        wall_s=wall,
        cpu_s=_cpu() - cpu_before,
        peak_rss_mb=peak_rss_mb(),
    )
    if profile is not None:
        outcome["profile"] = stage_times(profile, sender_profile, wall)
    sys.stdout.write("BENCH-RESULT " + json.dumps(outcome) + "\n")


if __name__ == "__main__":
    main()
