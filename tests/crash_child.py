"""The sync as a separate process, for the crash-and-resume tests (``tests/test_crash_resume.py``).

One run is what an Airflow task attempt does: build the hook from an ``AIRFLOW_CONN_*``
variable, check the sequence, read a CSV in chunks, and push it through a :class:`SyncRun`
whose state is a SQLite file; then write ``run.finish().to_xcom()`` as JSON. A retried attempt
is the same run again with the same ``run_id``.

A run is described by a JSON config (see :func:`run_sync`); ``pause`` stops the process at a
chosen point (it writes the ``marker`` file, then sleeps) so the test can kill it there with
SIGKILL:

- ``{"at": "read", "n": N}``: after N source chunks were read and handled;
- ``{"at": "push_start", "n": N}``: at the N-th batch, once it is marked as being sent in
  the state and before any request for it leaves;
- ``{"at": "push_done", "n": N}``: once the service answered the N-th batch, before its
  outcome is recorded;
- ``{"at": "finish", "n": 0}``: after everything was sent, confirmed and recorded, before the
  result is read.

Two ways to run it:

- ``python tests/crash_child.py CONFIG.json``: one run in this process;
- ``python tests/crash_child.py --serve``: a warm parent that imported everything once and
  forks one fresh process per run, so a test pays Airflow's import time once, not twice per
  kill point. It reads JSON lines on stdin: ``{"op": "run", "config": {...}}`` answers
  ``{"pid": N}``, ``{"op": "poll", "pid": N}`` answers how that process ended or that it
  still runs; answer lines start with ``crash_child: ``. Each forked run is a real process of
  its own, as a task attempt under Airflow's supervisor is.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from airflow_provider_sequences.adapters.reply import ReplyAdapter
from airflow_provider_sequences.adapters.whippy import WhippyAdapter
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.contract import BatchOutcome, ServiceAdapter
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import read_file_chunks
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine

#: Source column -> contact field, and the key column, per service.
COLUMN_MAPS = {
    "reply": ({"email": "email", "first_name": "firstName", "company": "company"}, "email"),
    "whippy": ({"phone": "phone", "name": "name", "email": "email"}, "phone"),
}


#: Prefix of the server's answer lines (Airflow may print to stdout while it is imported).
ANSWER = "crash_child: "


class Pause:
    """Stops the process at one chosen point: writes the marker, then sleeps until killed."""

    def __init__(self, spec: dict[str, Any] | None, marker: str) -> None:
        self.at = spec["at"] if spec else None
        self.n = int(spec["n"]) if spec else -1
        self.marker = Path(marker)

    def __call__(self, at: str, n: int) -> None:
        if at != self.at or n != self.n:
            return
        partial = self.marker.with_suffix(".partial")
        partial.write_text(f"{at} {n}\n")
        partial.rename(self.marker)
        time.sleep(600)
        raise SystemExit("the test did not kill this process in time")


def _adapter(config: dict[str, Any]) -> ServiceAdapter:
    adapter: ServiceAdapter
    if config["service"] == "reply":
        adapter = ReplyAdapter(ReplyHook(), int(config["sequence_id"]))
    else:
        adapter = WhippyAdapter(WhippyHook(), str(config["sequence_id"]))
    adapter.preflight()
    return adapter


def _pausing_push(adapter: ServiceAdapter, pause: Pause) -> None:
    push = adapter.push
    calls = 0

    def wrapped(batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        nonlocal calls
        calls += 1
        pause("push_start", calls)
        outcome = push(batch, resent_keys=resent_keys)
        pause("push_done", calls)
        return outcome

    adapter.push = wrapped  # type: ignore[method-assign]


def _chunks(config: dict[str, Any], pause: Pause) -> Iterator[pd.DataFrame]:
    for n, chunk in enumerate(read_file_chunks(config["source"], chunk_size=int(config["chunk_size"]))):
        pause("read", n)
        yield chunk


def run_sync(config: dict[str, Any]) -> dict[str, Any]:
    """One task attempt; returns the run's result as the operator would push it to XCom.

    Config keys: ``service`` ("reply" or "whippy"), ``env`` (variables to set, e.g. the
    connection), ``sequence_id``, ``source`` (a CSV file), ``chunk_size``, ``batch_size``,
    ``state_url``, ``run_id``, ``enrollment_timeout``, ``pause`` and ``marker`` (see the
    module docstring), ``result`` (where the JSON result is written).
    """
    os.environ.update(config.get("env") or {})
    pause = Pause(config.get("pause"), config.get("marker") or os.devnull)
    adapter = _adapter(config)
    _pausing_push(adapter, pause)
    column_map, key_column = COLUMN_MAPS[config["service"]]
    spec = PrepareSpec(column_map=column_map, key_column=key_column, rules=adapter.rules)
    state = SyncState(
        create_state_engine(config["state_url"]),
        Scope(adapter.service, f"{adapter.service}_default", str(config["sequence_id"])),
    )
    options = SyncOptions(
        batch_size=int(config["batch_size"]), enrollment_timeout=float(config["enrollment_timeout"])
    )
    if isinstance(adapter, WhippyAdapter):
        # As the operator does: a state without a finished run may not know who is in the
        # sequence (a first night, or its retry), so the members are read first.
        adapter.read_members_unless_known(state)
    run = SyncRun(adapter, spec, state, config["run_id"], options)
    run.run(_chunks(config, pause))
    run.confirm()
    pause("finish", 0)
    finished = run.finish()
    if isinstance(adapter, WhippyAdapter):
        state.save_run(config["run_id"], dict(finished.stats), finished=True)
    result = finished.to_xcom()
    target = Path(config["result"])
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.rename(target)
    return result


def _forked_run(config: dict[str, Any]) -> None:
    """In the forked process: detach from the parent's pipes, run, and exit without cleanup."""
    code = 0
    try:
        log = os.open(config["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
        run_sync(config)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _ended(status: int) -> dict[str, Any]:
    if os.WIFSIGNALED(status):
        return {"exit_code": None, "signal": os.WTERMSIG(status)}
    return {"exit_code": os.WEXITSTATUS(status), "signal": None}


def serve() -> None:
    """Fork one process per ``run`` request read on stdin; report how each ended on ``poll``."""
    # Answers go to the original stdout; anything else printed from now on goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    ended: dict[int, dict[str, Any]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        answer: dict[str, Any]
        if request["op"] == "run":
            pid = os.fork()
            if pid == 0:
                _forked_run(request["config"])
            answer = {"pid": pid}
        else:
            pid = int(request["pid"])
            if pid not in ended:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    ended[pid] = {"pid": pid, **_ended(status)}
            answer = ended.get(pid) or {"pid": pid, "running": True}
        answers.write(ANSWER + json.dumps(answer) + "\n")
        answers.flush()


def main(argv: list[str]) -> None:
    if argv == ["--serve"]:
        serve()
        return
    if len(argv) != 1:
        raise SystemExit("usage: crash_child.py CONFIG.json | --serve")
    logging.basicConfig(level=logging.INFO)
    run_sync(json.loads(Path(argv[0]).read_text()))


if __name__ == "__main__":
    main(sys.argv[1:])
