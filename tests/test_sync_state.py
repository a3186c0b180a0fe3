"""The sync state and incremental runs, on SQLite and on PostgreSQL.

Every test runs twice: on a SQLite file in ``tmp_path``, and on a fresh schema of the test
PostgreSQL server (``postgres_url``, started by ``scripts/postgres.sh``) dropped afterwards, so
tests never see each other's rows. The run tests drive :class:`SyncRun` with the real Reply
adapter and hook against the Reply simulator and read its ground truth.

Imports of the engine, adapter and hook stay inside the helpers that use them: the concurrent
writer test starts fresh interpreters (spawn) that import this module, and Airflow is slow to
import.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_sequences.sync.state import (
    ADDED,
    NOT_PROCESSED,
    PENDING,
    SENDING,
    Claims,
    KeyOutcome,
    Scope,
    SyncState,
    create_state_engine,
    runs_table,
    state_table,
)
from airflow_provider_sequences.testing import connection_env_var, connection_json

if TYPE_CHECKING:
    from airflow_provider_sequences.testing import ReplyAccount, ReplySimulator
    from airflow_provider_sequences.testing.faults import FaultKind, RequestRecord

SCOPE = Scope("reply", "reply_default", "1001")


# -- backends ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+psycopg"])
def state_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A state database with no table yet: a SQLite file, or a fresh PostgreSQL schema through
    psycopg2 (SQLAlchemy's default) or psycopg 3 (whose writes go through ``COPY``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    server: str = request.getfixturevalue("postgres_url").replace("postgresql://", f"{request.param}://", 1)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(server)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        # Every connection made from this URL works in the fresh schema.
        yield f"{server}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(state_url: str) -> Iterator[sa.Engine]:
    engine = create_state_engine(state_url)
    expected = "sqlite" if state_url.startswith("sqlite") else "postgresql"
    assert engine.dialect.name == expected
    yield engine
    engine.dispose()


@pytest.fixture
def state(engine: sa.Engine) -> SyncState:
    return SyncState(engine, SCOPE)


def rows_of(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """A state frame by key, with missing values as ``None`` (SQLite and pandas differ)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {record["contact_key"]: record for record in records}


# -- SyncState --------------------------------------------------------------------------------


def test_record_upserts_one_row_per_key(state: SyncState) -> None:
    assert state.record([], "run-1") == 0
    assert state.record([KeyOutcome("a", SENDING), KeyOutcome("b", SENDING)], "run-1") == 2
    state.record(
        [
            KeyOutcome("a", ADDED, fingerprint="fa1", service_contact_id="11"),
            KeyOutcome("b", NOT_PROCESSED, "requestFailed", "500 from Reply", fingerprint="fb1"),
        ],
        "run-1",
    )
    after_first = rows_of(state.to_frame())

    # The next run sends b again; it goes through pending before it is confirmed.
    state.record([KeyOutcome("b", SENDING)], "run-2")
    state.record([KeyOutcome("b", PENDING, identity={"email": "b@example.com"})], "run-2")
    state.record([KeyOutcome("b", ADDED, service_contact_id="12")], "run-2")

    rows = rows_of(state.to_frame())
    assert list(rows) == ["a", "b"]
    a, b = rows["a"], rows["b"]
    assert a == after_first["a"]  # untouched by run-2
    assert (a["status"], a["attempts"], a["first_run_id"], a["last_run_id"]) == (ADDED, 1, "run-1", "run-1")
    assert (a["fingerprint"], a["service_contact_id"], a["reason"]) == ("fa1", "11", None)

    # attempts grow by one per SENDING, not per write; the first run id stays.
    assert (b["status"], b["attempts"], b["first_run_id"], b["last_run_id"]) == (ADDED, 2, "run-1", "run-2")
    # The outcome's own columns are replaced; fingerprint, identity and contact id are kept
    # when a later write does not know them.
    assert (b["reason"], b["detail"], b["service_contact_id"]) == (None, None, "12")
    assert b["fingerprint"] == "fb1"
    assert json.loads(b["identity"]) == {"email": "b@example.com"}
    assert b["created_at"] == after_first["b"]["created_at"]
    assert b["updated_at"] > after_first["b"]["updated_at"]


def test_one_write_that_names_a_key_twice_keeps_its_last_outcome(state: SyncState) -> None:
    """PostgreSQL upserts a batch in one statement, which may not touch a row twice."""
    state.record(
        [
            KeyOutcome("a", SENDING),
            KeyOutcome("b", ADDED),
            KeyOutcome("a", NOT_PROCESSED, "invalidEmail", "x"),
        ],
        "run-1",
    )
    rows = rows_of(state.to_frame())
    assert (rows["a"]["status"], rows["a"]["attempts"], rows["b"]["status"]) == (NOT_PROCESSED, 1, ADDED)


def test_a_batch_in_flight_is_one_row_shown_as_sending_until_its_outcomes(state: SyncState) -> None:
    state.record([KeyOutcome("a", ADDED, fingerprint="fa", sent=True)], "run-1")
    batch = state.mark_sending(["a", "b"], "run-2")
    assert state.in_flight() == {batch: ["a", "b"]}
    # People reading the state see the batch's keys as being sent, the send counted.
    rows = rows_of(state.to_frame())
    assert {key: (row["status"], row["attempts"], row["last_run_id"]) for key, row in rows.items()} == {
        "a": (SENDING, 2, "run-2"),
        "b": (SENDING, 1, "run-2"),
    }
    # The outcomes and the end of the flight are one transaction.
    state.record(
        [
            KeyOutcome("a", ADDED, sent=True),
            KeyOutcome("b", NOT_PROCESSED, "requestFailed", "500", sent=True),
        ],
        "run-2",
        batch_id=batch,
    )
    assert state.in_flight() == {}
    rows = rows_of(state.to_frame())
    assert {key: (row["status"], row["attempts"]) for key, row in rows.items()} == {
        "a": (ADDED, 2),
        "b": (NOT_PROCESSED, 1),
    }


def test_settling_batches_left_in_flight_keeps_the_keys_a_run_did_not_see(state: SyncState) -> None:
    first = state.mark_sending(["a", "b"], "run-1")
    second = state.mark_sending(["c"], "run-1")
    state.settle_in_flight([first, second], "run-2", unresolved=["b"])
    assert list(state.in_flight().values()) == [["b"]]
    assert rows_of(state.to_frame())["b"]["status"] == SENDING


def test_lookup_returns_known_keys_of_its_scope_only(engine: sa.Engine, state: SyncState) -> None:
    state.record([KeyOutcome("a", SENDING)], "run-1")
    state.record(
        [KeyOutcome("a", ADDED, fingerprint="fa"), KeyOutcome("b", NOT_PROCESSED, "invalidEmail", "no @")],
        "run-1",
    )
    columns = [
        "contact_key",
        "status",
        "reason",
        "detail",
        "fingerprint",
        "attempts",
        "last_run_id",
        "service_contact_id",
    ]
    found = state.lookup(["b", "never-seen", "a"])
    assert list(found.columns) == columns
    rows = rows_of(found)
    assert sorted(rows) == ["a", "b"]
    assert rows["a"]["attempts"] == 1
    assert (rows["b"]["status"], rows["b"]["reason"], rows["b"]["attempts"]) == (
        NOT_PROCESSED,
        "invalidEmail",
        0,
    )
    empty = state.lookup([])
    assert empty.empty
    assert list(empty.columns) == columns

    # Same key, other sequence / connection / service: separate records.
    others = [
        SyncState(engine, Scope("reply", "reply_default", "1002")),
        SyncState(engine, Scope("reply", "reply_other", "1001")),
        SyncState(engine, Scope("whippy", "reply_default", "1001")),
    ]
    for other in others:
        assert other.lookup(["a", "b"]).empty
        other.record([KeyOutcome("a", NOT_PROCESSED, "forbidden", "not yours")], "run-x")
        assert other.to_frame()["contact_key"].tolist() == ["a"]
    assert rows_of(state.lookup(["a"]))["a"]["status"] == ADDED
    assert len(state.to_frame()) == 2


def test_enrolled_keys_are_this_scopes_added_keys_but_those_of_the_runs_named(
    engine: sa.Engine, state: SyncState
) -> None:
    """What an unchanged night reads in one pass instead of a lookup per key."""
    state.record([KeyOutcome(f"old{i}", ADDED) for i in range(5)], "run-1")
    state.record([KeyOutcome("live", ADDED), KeyOutcome("mine", PENDING)], "run-2")
    state.record([KeyOutcome("refused", NOT_PROCESSED, "invalidEmail", "no @")], "run-1")
    SyncState(engine, Scope("reply", "reply_default", "1002")).record([KeyOutcome("other", ADDED)], "run-1")

    def read(excluding: set[str]) -> list[str]:
        return sorted(key for part in state.enrolled_keys(excluding, slice_size=2) for key in part)

    assert read(set()) == ["live", *(f"old{i}" for i in range(5))]
    assert read({"run-2", "run-3"}) == [f"old{i}" for i in range(5)]
    assert state.key_count() == 8


def test_the_last_finished_runs_rows_stand_for_the_key_count(engine: sa.Engine, state: SyncState) -> None:
    """When the enrolled pass pays off (2% of the state read) without counting the keys, which
    reads the whole index: some 3 s at ten million keys, on every unchanged night."""
    assert state.last_run_rows() is None
    state.save_run("run-1", {"rows": 1_000}, finished=True)
    state.save_run("run-2", {"rows": 400})  # still running: not finished
    SyncState(engine, Scope("reply", "reply_default", "1002")).save_run("run-3", {"rows": 9}, finished=True)
    assert state.last_run_rows() == 1_000
    state.save_run("run-2", {"rows": 1_200}, finished=True)
    assert state.last_run_rows() == 1_200


def test_run_outcomes_are_the_keys_a_run_wrote_last(state: SyncState) -> None:
    state.record(
        [
            KeyOutcome("c", ADDED),
            KeyOutcome("a", NOT_PROCESSED, "invalidEmail", "no @"),
            KeyOutcome("b", NOT_PROCESSED, "requestFailed", "timeout"),
        ],
        "run-1",
    )
    state.record([KeyOutcome("b", ADDED)], "run-2")
    assert list(state.run_outcomes("run-1")) == [
        ("a", NOT_PROCESSED, "invalidEmail", "no @"),
        ("c", ADDED, None, None),
    ]
    assert list(state.run_outcomes("run-2")) == [("b", ADDED, None, None)]
    assert list(state.run_outcomes("run-3")) == []
    assert list(SyncState(state.engine, Scope("reply", "reply_default", "1002")).run_outcomes("run-1")) == []


def test_a_runs_result_counts_its_keys_in_the_state_and_reads_them_only_when_asked(
    state: SyncState,
) -> None:
    """Ten million added keys as Python strings were most of a first night's memory: the
    result counts them where they are, and reads them only for whoever asks for the keys."""
    import tracemalloc

    from airflow_provider_sequences.sync.record import Recorder
    from airflow_provider_sequences.sync.values import AddedKeys

    keys = [f"crm-{i:07d}" for i in range(30_000)]
    state.record([], "run-1", added=AddedKeys(dict.fromkeys(keys), {}))
    state.record([KeyOutcome("bad", NOT_PROCESSED, "invalidEmail", "no @")], "run-1")
    state.record([KeyOutcome("late", PENDING)], "run-1")
    recorder = Recorder(state, "run-1", writes_state=True, mask_values=False, service="Reply")
    tracemalloc.start()
    try:
        result = recorder.finish(dry_run=False, would_send=0)
        stats = {name: value for name, value in result.to_xcom(max_keys=100)["stats"].items() if value}
        reasons = result.reasons()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats == {"added": 30_000, "not_processed": 2}
    assert reasons == {"invalidEmail": 1, "enrollmentUnconfirmed": 1}
    # 30,000 keys as strings in a list take some 2.5 MB.
    assert peak < 500_000, peak
    assert result.added == keys
    assert result.not_processed["bad"] == {"reason": "invalidEmail", "detail": "no @"}
    assert result.not_processed["late"]["reason"] == "enrollmentUnconfirmed"
    assert result.to_xcom()["stats"]["added"] == 30_000


def test_promote_pending_records_a_runs_pending_keys_as_added_only_when_the_count_matches(
    state: SyncState,
) -> None:
    identity = {"email": "p@example.com"}
    state.record(
        [KeyOutcome(k, PENDING, fingerprint=f"f{k}", identity=identity, sent=True) for k in "pqr"], "run-1"
    )
    state.record([KeyOutcome("s", PENDING, sent=True)], "run-2")  # another run's: never touched
    other = SyncState(state.engine, Scope("reply", "reply_default", "1002"))
    other.record([KeyOutcome("p", PENDING, sent=True)], "run-1")  # another scope's: never touched
    before = rows_of(state.to_frame())

    # The caller found two keys, but three are pending: nothing changes.
    assert not state.promote_pending("run-1", expected=2)
    assert rows_of(state.to_frame()) == before

    state.record([KeyOutcome("r", NOT_PROCESSED, "notEnrolled", "not in the step")], "run-1")
    assert state.promote_pending("run-1", expected=2)
    rows = rows_of(state.to_frame())
    assert {k: rows[k]["status"] for k in "pqrs"} == {
        "p": ADDED,
        "q": ADDED,
        "r": NOT_PROCESSED,
        "s": PENDING,
    }
    # Only the status moves: what the send recorded stays, as the per-key upsert kept it.
    p = rows["p"]
    assert (p["attempts"], p["fingerprint"], p["last_run_id"], p["reason"]) == (1, "fp", "run-1", None)
    assert json.loads(p["identity"]) == identity
    assert p["updated_at"] >= before["p"]["updated_at"]
    assert rows_of(other.to_frame())["p"]["status"] == PENDING


def test_to_frame_is_the_table_users_read(engine: sa.Engine, state: SyncState) -> None:
    empty = state.to_frame()
    assert empty.empty
    assert list(empty.columns) == [column.name for column in state_table.columns]

    state.record([KeyOutcome(f"k{i}", SENDING) for i in range(4)], "night-1")
    state.record(
        [
            KeyOutcome("k0", ADDED, fingerprint="f0", service_contact_id="100"),
            KeyOutcome("k1", ADDED, fingerprint="f1", service_contact_id="101"),
            KeyOutcome("k2", NOT_PROCESSED, "contactLimitExceeded", "plan limit", fingerprint="f2"),
            KeyOutcome("k3", NOT_PROCESSED, "requestFailed", "500", fingerprint="f3"),
            KeyOutcome("k4", NOT_PROCESSED, "invalidEmail", "no @", fingerprint="f4"),
        ],
        "night-1",
    )
    frame = state.to_frame()
    assert list(frame.columns) == [column.name for column in state_table.columns]
    assert frame["contact_key"].tolist() == ["k0", "k1", "k2", "k3", "k4"]
    assert set(frame["service"]) == {"reply"}
    assert frame["attempts"].tolist() == [1, 1, 1, 1, 0]
    assert pd.api.types.is_integer_dtype(frame["attempts"])
    # Timestamps are aware UTC on both databases, so users can compare them with "now".
    for column in ("created_at", "updated_at"):
        assert str(frame[column].dt.tz) == "UTC"
    now = pd.Timestamp.now(tz="UTC")
    assert ((now - frame["updated_at"]) < pd.Timedelta(minutes=5)).all()
    # "Who failed why" is a group-by away.
    failed = frame[frame["status"] == NOT_PROCESSED]
    assert failed.groupby("reason").size().to_dict() == {
        "contactLimitExceeded": 1,
        "invalidEmail": 1,
        "requestFailed": 1,
    }
    # And a plain SQL table for any other tool.
    with engine.connect() as connection:
        added = connection.execute(
            sa.text(
                "SELECT contact_key, service_contact_id FROM sequence_sync_state "
                "WHERE sequence_id = :sequence AND status = 'added' ORDER BY contact_key"
            ),
            {"sequence": SCOPE.sequence_id},
        ).all()
    assert [tuple(row) for row in added] == [("k0", "100"), ("k1", "101")]


def test_save_and_load_run(engine: sa.Engine, state: SyncState) -> None:
    assert state.load_run("night-1") is None
    state.save_run("night-1", {"rows": 10, "added": 3})
    assert state.load_run("night-1") == {"rows": 10, "added": 3, "finished": False}

    def started_at() -> list[Any]:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(runs_table.c.started_at)).scalars())

    first = started_at()
    state.save_run("night-1", {"rows": 20, "added": 7, "unchanged": 3}, finished=True)
    assert state.load_run("night-1") == {"rows": 20, "added": 7, "unchanged": 3, "finished": True}
    assert started_at() == first  # one row per run, its start kept
    state.save_run("night-2", {"rows": 1})
    assert state.load_run("night-2") == {"rows": 1, "finished": False}
    assert SyncState(engine, Scope("reply", "reply_default", "1002")).load_run("night-1") is None


def test_claims_round_trip_per_scope_in_the_order_they_were_saved(
    engine: sa.Engine, state: SyncState
) -> None:
    # Hashes are any 64-bit value: both ends of the range survive either database.
    table = np.array([[2**64 - 1, 0], [1, 2**63]], dtype="<u8")
    first = Claims(("phone", "email"), ["k1", "k2"], table.tobytes())
    second = Claims(("phone",), [f"k{i}" for i in range(5_000)], np.arange(5_000, dtype="<u8").tobytes())
    state.save_claims(first)
    state.save_claims(None)  # a batch whose values were all sent before
    state.save_claims(second)
    other = SyncState(engine, Scope("whippy", "whippy_default", "other"))
    other.save_claims(Claims(("email",), ["elsewhere"], np.ones(1, dtype="<u8").tobytes()))

    assert list(state.iter_claims()) == [first, second]
    assert list(other.iter_claims()) == [Claims(("email",), ["elsewhere"], np.ones(1, dtype="<u8").tobytes())]


def test_lookup_of_more_keys_than_one_statement_may_bind(state: SyncState) -> None:
    # The IN list is cut in slices of 5,000 keys: look up several slices' worth.
    count = 12_000
    limit = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)  # Python 3.11+
    if state.engine.dialect.name == "sqlite" and limit is not None:
        # SQLite's default build binds at most 32,766 parameters (Debian's allows 250,000):
        # impose the default, and look up more keys, so only the slicing makes this work.
        @sa.event.listens_for(state.engine, "connect")
        def _default_limit(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.setlimit(limit, 32_766)

        state.engine.dispose()
        count = 33_000
    keys = [f"key-{i:06d}" for i in range(count)]
    state.record([KeyOutcome(key, ADDED, fingerprint=key[-6:]) for key in keys], "run-1")
    SyncState(state.engine, Scope("reply", "reply_default", "1002")).record(
        [KeyOutcome(key, NOT_PROCESSED, "forbidden", "") for key in keys[:100]], "run-1"
    )

    found = state.lookup([*reversed(keys), "missing-1", "missing-2"])
    assert len(found) == count
    assert set(found["contact_key"]) == set(keys)
    assert set(found["status"]) == {ADDED}
    assert (found["fingerprint"] == found["contact_key"].str[-6:]).all()


def _record_keys(url: str, shard: str, count: int, barrier: Any) -> None:
    """One worker process: records its keys batch by batch, as a mapped shard's run does."""
    engine = create_state_engine(url)
    barrier.wait(timeout=120)
    # Both workers create the tables at the same moment on a database that has none.
    state = SyncState(engine, SCOPE)
    for start in range(0, count, 40):
        keys = [f"{shard}-{i:05d}" for i in range(start, min(start + 40, count))]
        state.record([KeyOutcome(key, SENDING) for key in keys], f"run-{shard}")
        state.record(
            [KeyOutcome(key, ADDED, fingerprint=shard, service_contact_id=key) for key in keys],
            f"run-{shard}",
        )
    engine.dispose()


def test_concurrent_writers_lose_no_record(state_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    count = 1_200
    workers = [
        context.Process(target=_record_keys, args=(state_url, shard, count, barrier), daemon=True)
        for shard in ("shard0", "shard1")
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=120)
        assert [worker.exitcode for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()

    engine = create_state_engine(state_url)
    try:
        frame = SyncState(engine, SCOPE).to_frame()
    finally:
        engine.dispose()
    assert len(frame) == 2 * count
    assert set(frame["status"]) == {ADDED}
    assert set(frame["attempts"]) == {1}
    assert (frame["service_contact_id"] == frame["contact_key"]).all()
    assert frame.groupby("last_run_id").size().to_dict() == {"run-shard0": count, "run-shard1": count}


# -- runs against the Reply simulator ---------------------------------------------------------


def person(i: int, **fields: Any) -> dict[str, Any]:
    return {"crm_id": f"c{i:03d}", "email": f"person{i}@example.com", "first": f"Person {i}", **fields}


class Nights:
    """Consecutive runs ("nights") of an export into the simulator's sequence, one state."""

    def __init__(self, engine: sa.Engine, simulator: ReplySimulator, account: ReplyAccount) -> None:
        self.engine = engine
        self.simulator = simulator
        self.account = account
        self.night = 0
        #: The write requests the simulator received during the last night.
        self.writes: list[RequestRecord] = []

    @property
    def state(self) -> SyncState:
        return SyncState(self.engine, Scope("reply", "reply_default", str(self.account.sequence_id)))

    def run(
        self,
        rows: list[dict[str, Any]],
        *,
        faults: tuple[FaultKind | None, ...] = (),
        batch_size: int = 3,
        **options: Any,
    ) -> dict[str, Any]:
        """One night: a fresh hook, adapter and state, as a new Airflow task would have."""
        from airflow_provider_sequences.adapters.reply import ReplyAdapter
        from airflow_provider_sequences.hooks.reply import ReplyHook
        from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
        from airflow_provider_sequences.sync.prepare import PrepareSpec
        from airflow_provider_sequences.sync.source import records_chunks

        self.night += 1
        adapter = ReplyAdapter(ReplyHook("reply_default"), self.account.sequence_id)
        adapter.preflight()
        spec = PrepareSpec(
            column_map={"email": "email", "first": "firstName"}, key_column="crm_id", rules=adapter.rules
        )
        seen = len(self.simulator.requests)
        self.simulator.faults.force(*faults)
        run = SyncRun(
            adapter, spec, self.state, f"night-{self.night}", SyncOptions(batch_size=batch_size, **options)
        )
        run.run(records_chunks(rows, chunk_size=4))
        run.confirm()
        result = run.finish().to_xcom()
        self.writes = [r for r in self.simulator.requests[seen:] if r.method == "POST"]
        check_accounting(result)
        assert result["stats"]["write_requests"] == len(self.writes)
        return result

    def imported(self) -> int:
        """Contacts the last night's import requests carried (those that were answered)."""
        return sum(r.items or 0 for r in self.writes if r.path.endswith("/import") and r.status == 200)

    def enrolled(self) -> dict[str, int]:
        """Ground truth: email -> times the simulator added the contact to the sequence."""
        sequence = self.account.sequence_id
        counts = {cid: n for (sid, cid), n in self.simulator.enrolments.items() if sid == sequence}
        return {self.simulator.contact(cid)["email"]: n for cid, n in counts.items()}


def check_accounting(result: dict[str, Any]) -> None:
    """Every row is accounted for exactly once, in the result and in its stats."""
    stats = result["stats"]
    assert stats["rows"] == stats["added"] + stats["not_processed"] + stats["duplicates"] + stats["unchanged"]
    assert stats["added"] == len(result["added"]) == len(set(result["added"]))
    assert stats["not_processed"] == len(result["not_processed"])
    assert not set(result["added"]) & set(result["not_processed"])


@pytest.fixture
def nights(
    engine: sa.Engine, reply_simulator: ReplySimulator, reply_account: ReplyAccount, reply_connection: str
) -> Nights:
    return Nights(engine, reply_simulator, reply_account)


@pytest.fixture
def no_hook_retries(
    reply_simulator: ReplySimulator,
    reply_account: ReplyAccount,
    reply_connection: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hook sends each request once, so one injected 500 fails its batch."""
    monkeypatch.setenv(
        connection_env_var("reply_default"),
        connection_json("reply", reply_simulator.url, reply_account.api_key, max_attempts=1),
    )


def test_consecutive_nights_send_only_new_rows(nights: Nights) -> None:
    export = [person(i) for i in range(7)]
    export += [person(7, email="not-an-email"), person(1, first="Person 1 again")]

    first = nights.run(export)
    assert sorted(first["added"]) == [f"c{i:03d}" for i in range(7)]
    assert {k: v["reason"] for k, v in first["not_processed"].items()} == {"c007": "invalidEmail"}
    assert (first["stats"]["duplicates"], first["stats"]["unchanged"]) == (1, 0)
    assert len(nights.writes) == 6  # three batches: an import and a bulk add each
    assert nights.imported() == 7

    # The same export again: nothing to send.
    second = nights.run(export)
    assert nights.writes == []
    assert second["added"] == []
    assert second["stats"]["unchanged"] == 7
    assert list(second["not_processed"]) == ["c007"]

    # New rows: only they are sent.
    third = nights.run(export + [person(i) for i in range(8, 12)])
    assert sorted(third["added"]) == ["c008", "c009", "c010", "c011"]
    assert third["stats"]["unchanged"] == 7
    assert len(nights.writes) == 4
    assert nights.imported() == 4

    enrolled = nights.enrolled()
    assert len(enrolled) == 11
    assert set(enrolled.values()) == {1}
    state = rows_of(nights.state.to_frame())
    assert (state["c000"]["first_run_id"], state["c000"]["last_run_id"]) == ("night-1", "night-1")
    assert (state["c008"]["first_run_id"], state["c008"]["attempts"]) == ("night-3", 1)


@pytest.mark.usefixtures("no_hook_retries")
def test_transient_failure_is_retried_next_night(nights: Nights) -> None:
    export = [person(i) for i in range(6)]
    # Preflight is done; the first batch's import, the read of the sequence's contacts (the state
    # is new) and the first bulk add pass; the second batch's import meets a 500.
    first = nights.run(export, faults=(None, None, None, "server_error"))
    assert sorted(first["added"]) == ["c000", "c001", "c002"]
    assert {k: v["reason"] for k, v in first["not_processed"].items()} == dict.fromkeys(
        ["c003", "c004", "c005"], "requestFailed"
    )

    second = nights.run(export)
    assert sorted(second["added"]) == ["c003", "c004", "c005"]
    assert (second["stats"]["unchanged"], second["not_processed"]) == (3, {})
    assert len(nights.writes) == 2
    assert nights.imported() == 3

    third = nights.run(export)
    assert (nights.writes, third["stats"]["unchanged"]) == ([], 6)

    assert set(nights.enrolled().values()) == {1}
    assert len(nights.enrolled()) == 6
    retried = rows_of(nights.state.to_frame())["c004"]
    assert (retried["status"], retried["attempts"]) == (ADDED, 2)
    assert (retried["first_run_id"], retried["last_run_id"]) == ("night-1", "night-2")


@pytest.mark.usefixtures("no_hook_retries")
def test_transient_failure_is_given_up_after_max_attempts(nights: Nights) -> None:
    export = [person(0), person(1)]
    for _ in range(2):
        failed = nights.run(export, faults=("server_error",), max_attempts=2)
        assert {v["reason"] for v in failed["not_processed"].values()} == {"requestFailed"}
        assert len(nights.writes) == 1

    # Two sends failed: reported again, not sent; the note is not repeated night after night.
    details = []
    for _ in range(2):
        given_up = nights.run(export, max_attempts=2)
        assert nights.writes == []
        assert {v["reason"] for v in given_up["not_processed"].values()} == {"requestFailed"}
        details.append(given_up["not_processed"]["c000"]["detail"])
    assert details[0] == details[1]
    assert details[0].endswith("500 server.error: an unexpected error occurred (gave up after 2 attempts)")
    assert nights.enrolled() == {}


def test_data_rejection_is_retried_only_when_its_data_changes(nights: Nights) -> None:
    bad = person(1, email="not-an-email")
    first = nights.run([person(0), bad])
    rejection = first["not_processed"]["c001"]
    assert rejection["reason"] == "invalidEmail"

    # Unchanged: reported again with its reason, never sent, and the detail does not grow.
    for _ in range(2):
        again = nights.run([person(0), bad])
        assert nights.writes == []
        assert again["not_processed"] == {
            "c001": {"reason": "invalidEmail", "detail": f"{rejection['detail']} (unchanged since then)"}
        }
        assert again["stats"]["unchanged"] == 1

    # Changed, still bad: checked again and rejected afresh.
    still_bad = nights.run([person(0), {**bad, "first": "Renamed"}])
    assert still_bad["not_processed"] == {"c001": rejection}
    assert nights.writes == []

    # Fixed: sent and enrolled.
    fixed = nights.run([person(0), person(1)])
    assert (fixed["added"], fixed["not_processed"]) == (["c001"], {})
    assert nights.imported() == 1
    assert nights.enrolled() == {"person0@example.com": 1, "person1@example.com": 1}
    record = rows_of(nights.state.to_frame())["c001"]
    assert (record["status"], record["attempts"], record["first_run_id"]) == (ADDED, 1, "night-1")


def test_full_resync_sends_everything_again_and_records_it(nights: Nights) -> None:
    export = [person(i) for i in range(5)] + [person(5, email="not-an-email")]
    nights.run(export)
    assert len(nights.writes) == 4

    resync = nights.run(export, full_resync=True)
    # Imported again, but never named in a bulk add: reading the sequence shows an earlier
    # night enrolled them, so they are added (a bulk add could move them on).
    assert [w.path for w in nights.writes] == ["/v3/contacts/import"] * 2
    assert nights.imported() == 5
    assert nights.simulator.readds == {}
    assert sorted(resync["added"]) == [f"c{i:03d}" for i in range(5)]
    assert {k: v["reason"] for k, v in resync["not_processed"].items()} == {"c005": "invalidEmail"}
    assert resync["stats"]["unchanged"] == 0
    state = rows_of(nights.state.to_frame())
    assert {record["last_run_id"] for record in state.values()} == {"night-2"}
    assert [state[f"c{i:03d}"]["attempts"] for i in range(5)] == [2] * 5
    assert {record["status"] for key, record in state.items() if key != "c005"} == {ADDED}

    # The next incremental night trusts the state again.
    after = nights.run(export)
    assert nights.writes == []
    assert after["stats"]["unchanged"] == 5
    assert set(nights.enrolled().values()) == {1}


def test_unchanged_rows_skip_the_per_row_checks(nights: Nights, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan runs on keys alone: an unchanged night checks no row's email or phone."""
    from airflow_provider_sequences.sync.prepare import prepare_chunk as real

    checked: list[int] = []

    def counting(frame: pd.DataFrame, spec: Any, *, first_row: int) -> Any:
        if "email" in spec.column_map.values():  # the full checks, not the key pass
            checked.append(len(frame))
        return real(frame, spec, first_row=first_row)

    monkeypatch.setattr("airflow_provider_sequences.sync.chunk.prepare_chunk", counting)
    rows = [person(i) for i in range(10)]
    nights.run(rows)
    assert sum(checked) == 10
    checked.clear()
    nights.run([*rows, person(10)])
    assert sum(checked) == 1  # only the new row


def test_an_unchanged_night_reads_the_enrolled_keys_once_not_each_key(
    nights: Nights, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking up each key of a large export cost most of an unchanged night: once the run has
    read 2% as many rows as the state holds keys, the enrolled ones come from one read."""
    looked_up: list[str] = []
    real = SyncState.lookup

    def counting(self: SyncState, keys: Any) -> pd.DataFrame:
        looked_up.extend(keys)
        return real(self, keys)

    monkeypatch.setattr(SyncState, "lookup", counting)
    rows = [person(i) for i in range(40)] + [person(40, email="not-an-email")]
    nights.run(rows)
    looked_up.clear()
    again = nights.run([*rows, person(41)])
    assert nights.imported() == 1
    assert (again["stats"]["unchanged"], again["added"], list(again["not_processed"])) == (
        40,
        ["c041"],
        ["c040"],
    )
    # Only what the state does not record enrolled is looked up: the refused row and the new one.
    assert sorted(looked_up) == ["c040", "c041"]
    assert set(nights.enrolled().values()) == {1}


def test_read_sync_state_through_an_airflow_connection(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the README shows users: the state as a DataFrame, filtered, with UTC timestamps."""
    from airflow_provider_sequences.sync_state import read_sync_state

    path = tmp_path / "state.db"
    monkeypatch.setenv(connection_env_var("my_state"), json.dumps({"conn_type": "sqlite", "host": str(path)}))
    engine = create_state_engine(f"sqlite:///{path}")
    SyncState(engine, Scope("reply", "reply_default", "1001")).record(
        [KeyOutcome("a", "added"), KeyOutcome("b", "not_processed", "invalidEmail", "bad")], "run-1"
    )
    SyncState(engine, Scope("whippy", "whippy_default", "s-1")).record([KeyOutcome("c", "added")], "run-1")
    frame = read_sync_state(service="reply", sequence_id=1001, state_conn_id="my_state")
    assert frame["contact_key"].tolist() == ["a", "b"]
    assert frame["status"].tolist() == ["added", "not_processed"]
    assert frame["reason"].fillna("").tolist() == ["", "invalidEmail"]
    assert str(frame["updated_at"].dt.tz) == "UTC"
    assert len(read_sync_state(state_conn_id="my_state")) == 3
