"""One sync as a process of its own, for the many-workers tests (``tests/test_many_workers.py``).

``python tests/overlap_child.py CONFIG.json`` does what a task attempt does: build the hook from
an ``AIRFLOW_CONN_*`` variable, take the lease on its scope, read a CSV, send, read back, and
write the run's result (or the error that stopped it) as JSON to ``result``.

Config keys: ``service``, ``env``, ``conn_id``, ``sequence_id``, ``source``, ``batch_size``,
``state_url``, ``run_id``, ``group`` (the lease group), ``lock_timeout``, ``result``,
``barrier`` (a file to wait for before starting, once ``<result>.ready`` is written), and
``requests`` (instead of a sync: that many ``whoami`` / channel reads, for the rate budget).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from airflow_provider_sequences.adapters.reply import ReplyAdapter
from airflow_provider_sequences.adapters.whippy import WhippyAdapter
from airflow_provider_sequences.hooks.base import SequencesHook
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.contract import ServiceAdapter
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import read_file_chunks
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine

COLUMN_MAPS = {
    "reply": ({"email": "email", "first_name": "firstName"}, "email"),
    "whippy": ({"phone": "phone", "name": "name"}, "phone"),
}


def _hook(config: dict[str, Any]) -> SequencesHook:
    if config["service"] == "reply":
        return ReplyHook(config["conn_id"])
    return WhippyHook(config["conn_id"])


def _many_requests(hook: SequencesHook, count: int) -> dict[str, Any]:
    for _ in range(count):
        if isinstance(hook, ReplyHook):
            hook.whoami()
        else:
            assert isinstance(hook, WhippyHook)
            hook.list_channels(limit=1)
    return {"requests": count}


def _sync(config: dict[str, Any], hook: SequencesHook) -> dict[str, Any]:
    adapter: ServiceAdapter
    if isinstance(hook, ReplyHook):
        adapter = ReplyAdapter(hook, int(config["sequence_id"]))
    else:
        assert isinstance(hook, WhippyHook)
        adapter = WhippyAdapter(hook, str(config["sequence_id"]), poll_interval=0.2)
    account = getattr(hook, "account", config["conn_id"])
    adapter.preflight()
    column_map, key_column = COLUMN_MAPS[config["service"]]
    spec = PrepareSpec(column_map=column_map, key_column=key_column, rules=adapter.rules)
    state = SyncState(
        create_state_engine(config["state_url"]), Scope(adapter.service, account, str(config["sequence_id"]))
    )
    options = SyncOptions(batch_size=int(config["batch_size"]), enrollment_timeout=30.0)
    extra: dict[str, Any] = {}
    try:
        from airflow_provider_sequences.sync.lease import ScopeLease
    except ImportError:  # the code before leases, for checking that the tests fail there
        pass
    else:
        extra["lease"] = ScopeLease(
            state, config["run_id"], group=config.get("group"), lock_timeout=float(config["lock_timeout"])
        )
    run = SyncRun(adapter, spec, state, config["run_id"], options, **extra)
    try:
        run.run(read_file_chunks(config["source"], chunk_size=100))
        run.confirm()
        return run.finish().to_xcom()
    finally:
        if hasattr(run, "release"):
            run.release()


def main(path: str) -> None:
    config = json.loads(Path(path).read_text())
    os.environ.update(config.get("env") or {})
    hook = _hook(config)
    if config.get("barrier"):
        # Start together: say ready, then wait for the test's go (imports take seconds).
        barrier = Path(config["barrier"])
        Path(f"{config['result']}.ready").touch()
        while not barrier.exists():
            time.sleep(0.01)
    started = time.monotonic()
    result: dict[str, Any]
    try:
        if config.get("requests"):
            result = _many_requests(hook, int(config["requests"]))
        else:
            result = _sync(config, hook)
    except Exception as exc:
        result = {"error": type(exc).__name__, "message": str(exc), "holder": getattr(exc, "holder", None)}
    result["seconds"] = time.monotonic() - started
    target = Path(config["result"])
    target.with_suffix(".partial").write_text(json.dumps(result))
    target.with_suffix(".partial").rename(target)


if __name__ == "__main__":
    main(sys.argv[1])
