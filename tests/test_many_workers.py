"""Many workers on one account and one sequence at once: real processes, real simulators.

Each sync here runs in a process of its own (``tests/overlap_child.py``), as the tasks of a
LocalExecutor or Celery deployment do, sharing the sync state (a SQLite file, or PostgreSQL)
and the account. What must hold: nobody is enrolled twice (the simulator's ground truth), each
run's result accounts for every row, a second run waits for the first or fails clearly having
sent nothing, and together the processes stay under the account's documented rate limit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_sequences.adapters.reply import ReplyAdapter
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine, in_flight_table
from airflow_provider_sequences.testing import ReplyAccount, ReplySimulator, WhippyAccount, WhippySimulator
from airflow_provider_sequences.testing.accounts import connection_env_var, connection_json

CHILD = Path(__file__).with_name("overlap_child.py")
REPO = CHILD.parents[1]


# -- helpers ---------------------------------------------------------------------------------


def _start(tmp_path: Path, name: str, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    result = tmp_path / f"{name}.json"
    path = tmp_path / f"{name}.config.json"
    path.write_text(json.dumps({**config, "result": str(result), "barrier": str(tmp_path / "go")}))
    log = (tmp_path / f"{name}.log").open("wb")
    process = subprocess.Popen([sys.executable, str(CHILD), str(path)], cwd=REPO, stdout=log, stderr=log)
    return process, result


def _go(tmp_path: Path, started: list[tuple[subprocess.Popen[bytes], Path]], timeout: float = 120) -> None:
    """Let the children of a barrier start together, once each has imported everything."""
    deadline = time.monotonic() + timeout
    while not all(Path(f"{path}.ready").exists() for _, path in started):
        assert time.monotonic() < deadline, "the children did not get ready in time"
        assert all(process.poll() is None for process, _ in started), "a child died while starting"
        time.sleep(0.05)
    (tmp_path / "go").touch()


def _wait(started: list[tuple[subprocess.Popen[bytes], Path]], timeout: float = 150) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    for process, _ in started:
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    results = []
    for process, path in started:
        assert path.exists(), f"{path.name}: the child exited {process.returncode} without a result"
        results.append(json.loads(path.read_text()))
    return results


def _accounted(result: dict[str, Any]) -> int:
    stats = result["stats"]
    return (
        len(result["added"])
        + len(result["not_processed"])
        + int(stats["unchanged"])
        + int(stats["duplicates"])
    )


def _whippy_csv(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "whippy.csv"
    pd.DataFrame(
        {"phone": [f"+1415201{i:04d}" for i in range(count)], "name": [f"P {i}" for i in range(count)]}
    ).to_csv(path, index=False)
    return path


def _reply_csv(tmp_path: Path, count: int, name: str = "reply.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(
        {
            "email": [f"person{i}@example.com" for i in range(count)],
            "first_name": [f"P{i}" for i in range(count)],
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The sync state the processes share: the default SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sequence_sync_state.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"workers_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{base}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


# -- two runs of one sequence at once --------------------------------------------------------


@pytest.mark.whippy_simulator(time_scale=60, processing_delay=0.5)
def test_two_overlapping_runs_never_enrol_anyone_twice(
    tmp_path: Path, state_url: str, whippy_simulator: WhippySimulator, whippy_account: WhippyAccount
) -> None:
    source = _whippy_csv(tmp_path, 300)
    env = {
        connection_env_var("whippy_default"): connection_json(
            "whippy", whippy_simulator.url, whippy_account.api_key, rate_limit_time_scale=60
        )
    }
    common = {
        "service": "whippy",
        "env": env,
        "conn_id": "whippy_default",
        "sequence_id": whippy_account.sequence_id,
        "source": str(source),
        "batch_size": 100,
        "state_url": state_url,
        "lock_timeout": 120,
    }
    started = [
        _start(tmp_path, name, {**common, "run_id": f"nightly.sync[-1]:{name}", "group": name})
        for name in ("first", "second")
    ]
    _go(tmp_path, started)
    results = _wait(started)
    whippy_simulator.wait_idle()

    assert [r.get("error") for r in results] == [None, None], results
    enrolments = whippy_simulator.enrolments
    assert len(enrolments) == 300
    assert max(enrolments.values()) == 1  # nobody messaged twice
    first, second = (set(r["added"]) for r in results)
    assert not first & second  # never both report one contact added
    assert len(first) + len(second) == 300  # what the service really enrolled
    assert [_accounted(r) for r in results] == [300, 300]  # no row missing from either result


@pytest.mark.whippy_simulator(time_scale=60, processing_delay=3.0)
def test_a_second_run_fails_clearly_before_sending_when_the_lock_times_out(
    tmp_path: Path, whippy_simulator: WhippySimulator, whippy_account: WhippyAccount
) -> None:
    source = _whippy_csv(tmp_path, 200)
    env = {
        connection_env_var("whippy_default"): connection_json(
            "whippy", whippy_simulator.url, whippy_account.api_key, rate_limit_time_scale=60
        )
    }
    common = {
        "service": "whippy",
        "env": env,
        "conn_id": "whippy_default",
        "sequence_id": whippy_account.sequence_id,
        "source": str(source),
        "batch_size": 100,
        "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "lock_timeout": 0,
    }
    started = [
        _start(tmp_path, name, {**common, "run_id": f"nightly.sync[-1]:{name}", "group": name})
        for name in ("first", "second")
    ]
    _go(tmp_path, started)
    results = _wait(started)
    whippy_simulator.wait_idle()

    failed = [r for r in results if r.get("error")]
    assert len(failed) == 1, results
    winner = next(name for name, r in zip(("first", "second"), results, strict=True) if not r.get("error"))
    assert failed[0]["error"] == "ScopeBusyError"
    assert failed[0]["holder"] == f"nightly.sync[-1]:{winner}"
    assert f"nightly.sync[-1]:{winner}" in failed[0]["message"]
    # The loser sent nothing: only the winner's two batches were ever posted.
    posts = [r for r in whippy_simulator.requests if r.method == "POST"]
    assert len(posts) == 2
    assert max(whippy_simulator.enrolments.values()) == 1


# -- mapped shards: in parallel, nobody twice ------------------------------------------------


@pytest.mark.whippy_simulator(time_scale=60, processing_delay=0.5)
def test_mapped_shards_run_in_parallel_and_never_send_a_key_twice(
    tmp_path: Path, whippy_simulator: WhippySimulator, whippy_account: WhippyAccount
) -> None:
    frame = pd.read_csv(_whippy_csv(tmp_path, 400), dtype=str)
    # Two shards overlapping by 100 rows (an export cut carelessly).
    shards = [frame.iloc[:250], frame.iloc[150:]]
    env = {
        connection_env_var("whippy_default"): connection_json(
            "whippy", whippy_simulator.url, whippy_account.api_key, rate_limit_time_scale=60
        )
    }
    started = []
    for index, shard in enumerate(shards):
        path = tmp_path / f"shard{index}.csv"
        shard.to_csv(path, index=False)
        config = {
            "service": "whippy",
            "env": env,
            "conn_id": "whippy_default",
            "sequence_id": whippy_account.sequence_id,
            "source": str(path),
            "batch_size": 50,
            "state_url": f"sqlite:///{tmp_path / 'state.db'}",
            "lock_timeout": 0,  # shards of one group never wait for each other
            "run_id": f"nightly.sync[{index}]:night-1",
            "group": "nightly.sync:night-1",
        }
        started.append(_start(tmp_path, f"shard{index}", config))
    _go(tmp_path, started)
    results = _wait(started)
    whippy_simulator.wait_idle()

    assert [r.get("error") for r in results] == [None, None], results
    enrolments = whippy_simulator.enrolments
    assert len(enrolments) == 400
    assert max(enrolments.values()) == 1  # nobody messaged twice
    first, second = (set(r["added"]) for r in results)
    assert not first & second
    assert len(first) + len(second) == 400
    assert [_accounted(r) for r in results] == [250, 250]


# -- one rate budget per account -------------------------------------------------------------


@pytest.fixture(params=["file", "postgres", "redis"])
def budget_connection(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Where the processes' rate budget lives: the machine's default file, or a connection
    (``rate_limit_conn_id``) to PostgreSQL or Redis; the extras and variables that say so."""
    if request.param == "file":
        yield {}
        return
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        yield {"rate_limit_conn_id": "budget", connection_env_var("budget"): url}
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        connection = json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": port})
        yield {"rate_limit_conn_id": "budget", connection_env_var("budget"): connection}
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.serial
@pytest.mark.reply_simulator(time_scale=60)
def test_processes_on_one_account_share_its_rate_budget(
    tmp_path: Path,
    reply_simulator: ReplySimulator,
    reply_account: ReplyAccount,
    budget_connection: dict[str, str],
) -> None:
    # Two connection ids, one key: one account, one budget (100 requests a simulated minute).
    extra = {k: v for k, v in budget_connection.items() if not k.startswith("AIRFLOW_CONN_")}
    env = {
        connection_env_var(name): connection_json(
            "reply", reply_simulator.url, reply_account.api_key, rate_limit_time_scale=60, **extra
        )
        for name in ("reply_a", "reply_b")
    }
    env.update({k: v for k, v in budget_connection.items() if k.startswith("AIRFLOW_CONN_")})
    started = [
        _start(tmp_path, f"worker{i}", {"service": "reply", "env": env, "conn_id": conn, "requests": 120})
        for i, conn in enumerate(["reply_a", "reply_b", "reply_a", "reply_b"])
    ]
    _go(tmp_path, started)
    results = _wait(started)

    assert all("error" not in r for r in results), results
    statuses = [r.status for r in reply_simulator.requests]
    assert statuses.count(200) == 480
    # Four workers each pacing alone would draw hundreds of 429s; a shared budget draws none.
    assert statuses.count(429) == 0


# -- the account names the scope -------------------------------------------------------------


def test_two_connection_ids_to_one_account_share_the_sync_state(
    tmp_path: Path,
    reply_simulator: ReplySimulator,
    reply_account: ReplyAccount,
    whippy_simulator: WhippySimulator,
    whippy_account: WhippyAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator

    for name in ("crm_reply", "marketing_reply"):
        monkeypatch.setenv(
            connection_env_var(name), connection_json("reply", reply_simulator.url, reply_account.api_key)
        )
    for name in ("whippy_one", "whippy_two"):
        monkeypatch.setenv(
            connection_env_var(name), connection_json("whippy", whippy_simulator.url, whippy_account.api_key)
        )
    monkeypatch.setenv(
        connection_env_var("reply_other_host"), connection_json("reply", "http://127.0.0.1:9", "k")
    )
    assert ReplyHook("crm_reply").account == ReplyHook("marketing_reply").account
    assert ReplyHook("crm_reply").account.endswith(f":user-{reply_account.user_id}")
    assert WhippyHook("whippy_one").account == WhippyHook("whippy_two").account
    assert whippy_account.api_key not in WhippyHook("whippy_one").account  # never a secret

    source = _reply_csv(tmp_path, 30)
    results = []
    for night, conn_id in enumerate(("crm_reply", "marketing_reply")):
        operator = ReplyAddContactsToSequenceOperator(
            task_id="sync",
            reply_conn_id=conn_id,
            sequence_id=reply_account.sequence_id,
            column_map={"email": "email", "first_name": "firstName"},
            source_path=str(source),
        )
        context = {
            "ti": SimpleNamespace(dag_id="crm", task_id="sync", map_index=-1),
            "run_id": f"night-{night}",
        }
        run = operator.start_run(context)
        try:
            run.run(operator.source_chunks())
            results.append(run.finish().to_xcom())
        finally:
            run.release()
    assert len(results[0]["added"]) == 30
    assert results[1]["added"] == []
    assert results[1]["stats"]["unchanged"] == 30
    assert max(reply_simulator.enrolments.values()) == 1


# -- in-flight rows belong to their run ------------------------------------------------------


def _reply_run(
    state: SyncState,
    simulator: ReplySimulator,
    account: ReplyAccount,
    source: Path,
    run_id: str,
    **lease: Any,
) -> tuple[dict[str, Any], int]:
    """One Reply run in this process; returns its result and the bulk adds it sent."""
    adapter = ReplyAdapter(ReplyHook(), account.sequence_id)
    adapter.preflight()
    spec = PrepareSpec(
        column_map={"email": "email", "first_name": "firstName"}, key_column="email", rules=adapter.rules
    )
    before = sum(1 for r in simulator.requests if r.path.endswith("/contact-links/bulk"))
    extra: dict[str, Any] = {}
    if lease:
        from airflow_provider_sequences.sync.lease import ScopeLease

        extra["lease"] = ScopeLease(state, run_id, **lease)
    run = SyncRun(adapter, spec, state, run_id, SyncOptions(batch_size=20), **extra)
    run.run(pd.read_csv(source, chunksize=50))
    result = run.finish().to_xcom()
    if hasattr(run, "release"):
        run.release()
    after = sum(1 for r in simulator.requests if r.path.endswith("/contact-links/bulk"))
    return result, after - before


@pytest.mark.usefixtures("reply_connection")
def test_a_stale_in_flight_row_of_an_unrelated_run_is_neither_resent_nor_multiplied(
    tmp_path: Path, reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    source = _reply_csv(tmp_path, 40)
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    state = SyncState(engine, Scope("reply", "reply_default", str(reply_account.sequence_id)))
    first, _ = _reply_run(state, reply_simulator, reply_account, source, "nightly.sync[0]:night-1")
    assert len(first["added"]) == 40
    # What the bug left: the night's keys in flight under an unrelated DAG's run, which died.
    keys = sorted(first["added"])
    for _ in range(2):
        state.mark_sending(keys, "other_dag.sync[-1]:night-1")

    for night in (2, 3, 4):
        result, bulk_adds = _reply_run(
            state, reply_simulator, reply_account, source, f"nightly.sync[{night % 2}]:night-{night}"
        )
        assert result["added"] == []  # nobody reported added again
        assert result["stats"]["unchanged"] == 40
        assert bulk_adds == 0  # nobody sent again
        assert len(state.in_flight()) <= 1  # never multiplied
    assert max(reply_simulator.enrolments.values()) == 1


@pytest.mark.usefixtures("reply_connection")
def test_a_live_runs_in_flight_batch_is_not_another_runs_to_resolve(
    tmp_path: Path, reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    from airflow_provider_sequences.sync.lease import ScopeLease

    source = _reply_csv(tmp_path, 30)
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    state = SyncState(engine, Scope("reply", "reply_default", str(reply_account.sequence_id)))
    # A sibling shard is sending the first ten right now (its lease is live).
    sibling = ScopeLease(state, "nightly.sync[1]:night-1", group="nightly.sync:night-1", lock_timeout=0)
    sibling.acquire()
    try:
        taken = sorted(pd.read_csv(source)["email"].head(10))
        batch = state.mark_sending(taken, sibling.run_id)
        result, _ = _reply_run(
            state,
            reply_simulator,
            reply_account,
            source,
            "nightly.sync[0]:night-1",
            group="nightly.sync:night-1",
            lock_timeout=0,
        )
        assert len(result["added"]) == 20
        assert not set(result["added"]) & set(taken)  # the sibling's, not sent here
        assert result["stats"]["claimed_by_other_shards"] == 10
        flying = state.in_flight()
        assert flying == {batch: taken}  # still the sibling's, untouched
        with engine.connect() as connection:
            owners = set(connection.execute(sa.select(in_flight_table.c.run_id)).scalars())
        assert owners == {sibling.run_id}
    finally:
        sibling.release()
    assert max(reply_simulator.enrolments.values()) == 1


# -- leases ----------------------------------------------------------------------------------


def test_a_killed_workers_lease_expires_and_a_waiting_run_names_the_holder(tmp_path: Path) -> None:
    from airflow_provider_sequences.exceptions import ScopeBusyError
    from airflow_provider_sequences.sync.lease import ScopeLease

    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    state = SyncState(engine, Scope("reply", "reply:api.reply.io:user-7", "1001"))
    # A worker took the lease and was killed: nothing renews it.
    assert state.take_lease("crm.sync[-1]:night-1", "crm.sync:night-1", "worker-a:42", ttl=1.5) is None

    other = ScopeLease(state, "crm.sync[-1]:night-2", group="crm.sync:night-2", lock_timeout=0)
    with pytest.raises(ScopeBusyError) as busy:
        other.acquire()
    assert busy.value.holder == "crm.sync[-1]:night-1"
    assert "crm.sync[-1]:night-1" in str(busy.value)
    assert "sent nothing" in str(busy.value)

    # Within lock_timeout the dead worker's lease expires and the waiting run goes on.
    waiting = ScopeLease(state, "crm.sync[-1]:night-2", group="crm.sync:night-2", lock_timeout=10)
    started = time.monotonic()
    waiting.acquire()
    try:
        assert 0.5 < time.monotonic() - started < 10
        assert state.live_runs() == {"crm.sync[-1]:night-2"}
        # A shard of the same group joins at once; a third run still waits.
        shard = ScopeLease(state, "crm.sync[3]:night-2", group="crm.sync:night-2", lock_timeout=0)
        shard.acquire()
        shard.release()
        with pytest.raises(ScopeBusyError):
            ScopeLease(state, "crm.sync[-1]:night-3", group="crm.sync:night-3", lock_timeout=0).acquire()
    finally:
        waiting.release()
    assert state.live_runs() == set()
