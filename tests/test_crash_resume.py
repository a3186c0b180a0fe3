"""Crash and resume: the sync in a real process, killed with SIGKILL, then retried to the end.

Each case runs the sync of a CSV export in a separate process (``tests/crash_child.py``)
against a simulator served by this process, kills it with SIGKILL at one chosen point, then
runs it again with the same run id, as Airflow retries a task. The kill points are chosen
deterministically, without sleeps:

- from here, by holding the n-th request of a kind inside the simulator (:class:`Gate`):
  *before* the service sees it (sent, never applied) or *after* the service applied it with
  its answer withheld (applied, outcome unknown to the worker);
- in the child, by a pause it announces with a marker file: after reading n chunks, at the
  start of the n-th batch (marked as being sent, nothing sent yet), once the n-th batch was
  answered but before its outcome was recorded, and after everything was recorded.

After the retry, the result and the sync state must equal a clean run's on a fresh simulator,
the simulator's ground truth must show every added key enrolled exactly once, and work
acknowledged before the kill must not be sent again. Every case runs under both behaviours of
its simulator (documented, and as the service's own client reports the real server), and no
bulk add may name a contact already in the sequence.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_sequences.sync.state import (
    ADDED,
    NOT_PROCESSED,
    PENDING,
    SENDING,
    Scope,
    SyncState,
    create_state_engine,
)
from airflow_provider_sequences.testing import (
    ReplySimulator,
    WhippySimulator,
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
)
from airflow_provider_sequences.testing.base import BEHAVIOURS, Behaviour
from airflow_provider_sequences.testing.whippy_records import EnrolJob, utc_now

CHILD = Path(__file__).with_name("crash_child.py")
#: Prefix of the answers of ``crash_child.py --serve`` (as ``tests.crash_child.ANSWER``).
ANSWER = "crash_child: "
RUN_ID = "scheduled__2025-01-01T00:00:00+00:00"
#: Seconds to wait for a kill point, a process to end, a held request to finish.
PATIENCE = 60.0

REPLY_ROWS = 5_000
REPLY_BATCH = 500
REPLY_CHUNK = 300
WHIPPY_ROWS = 12_000
WHIPPY_BATCH = 4_000
WHIPPY_CHUNK = 2_500
#: Long enough for the simulator's background jobs (done before the last batch is recorded),
#: short because a few contacts are never confirmed (Whippy ignores them silently) and every
#: run waits this long for them.
WHIPPY_ENROLLMENT_TIMEOUT = 1.0

REPLY_IMPORT = ("POST", r"/v3/contacts/import")
REPLY_ADD = ("POST", r"/v3/sequences/\d+/contact-links/bulk")
REPLY_GET_SEQUENCE = ("GET", r"/v3/sequences/\d+")
WHIPPY_CREATE = ("POST", r"/v1/sequences/[^/]+/contacts")
WHIPPY_READ_BACK = ("GET", r"/v1/sequences/[^/]+/contacts")


# -- the sources ------------------------------------------------------------------------------


def reply_rows() -> list[tuple[str, str, str]]:
    """5,000 people plus junk: invalid and missing emails, duplicates (one in other case)."""
    rows: list[tuple[str, str, str]] = []
    for i in range(REPLY_ROWS):
        email = f"person{i:05d}@example.com"
        if i % 487 == 13:
            email = f"broken{i}@@example"
        elif i % 611 == 7:
            email = ""
        rows.append((email, f"First{i}", f"Company {i % 37}"))
    for j in range(25):
        earlier = rows[j * 150 + 3]
        email = earlier[0].upper() if j == 4 else earlier[0]
        rows.insert(j * 190 + 400, (email, f"Changed{j}", "Elsewhere"))
    return rows


#: Emails a user other than the key's owns in Reply: their import fails, whatever the run.
REPLY_FOREIGN = ("person00010@example.com", "person01777@example.com", "person03901@example.com")


def whippy_rows() -> list[tuple[str, str, str]]:
    """12,000 people plus junk: invalid and missing phones, duplicates."""
    rows: list[tuple[str, str, str]] = []
    for i in range(WHIPPY_ROWS):
        phone = f"+1415{2_000_000 + i:07d}"
        if i % 997 == 5:
            phone = f"12ab{i}"
        elif i % 1301 == 9:
            phone = ""
        rows.append((phone, f"Person {i}", f"person{i}@example.com" if i % 3 else ""))
    for j in range(20):
        earlier = rows[j * 500 + 1]
        rows.insert(j * 590 + 700, (earlier[0], f"Changed {j}", ""))
    return rows


#: Phones already active in the SMS sequence's second step: Whippy ignores them silently in
#: the first step, so they end not enrolled (all in the first batch, sent once per run).
WHIPPY_ELSEWHERE = ("+14152000100", "+14152001100", "+14152002100")


def write_csv(path: Path, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {
        "reply": write_csv(folder / "reply.csv", ("email", "first_name", "company"), reply_rows()),
        "whippy": write_csv(folder / "whippy.csv", ("phone", "name", "email"), whippy_rows()),
    }


# -- the simulators ---------------------------------------------------------------------------


@dataclass
class Service:
    """A freshly seeded simulator and what a child needs to reach it."""

    name: str
    sim: Any
    sequence_id: str
    env: dict[str, str]
    stop: Callable[[], None]
    #: Whippy: the step the sync enrols into.
    step_id: str = ""
    behaviour: Behaviour = "documented"


def start_service(name: str, behaviour: Behaviour = "documented") -> Service:
    if name == "reply":
        reply = ReplySimulator(behaviour=behaviour).start()
        account = seed_reply_account(reply)
        other = reply.add_user("someone-else@example.com")
        for email in REPLY_FOREIGN:
            reply.add_contact(email, owner_user_id=other)
        env = {connection_env_var("reply_default"): connection_json("reply", reply.url, account.api_key)}
        return Service(name, reply, str(account.sequence_id), env, reply.stop, behaviour=behaviour)
    whippy = WhippySimulator(enforce_rate_limits=False, behaviour=behaviour).start()
    whippy_account = seed_whippy_account(whippy)
    steps = whippy.sequence(whippy_account.sequence_id)["steps"]
    for phone in WHIPPY_ELSEWHERE:
        whippy.run_job(
            EnrolJob("org-1", whippy_account.sequence_id, steps[1]["id"], [{"phone": phone}], utc_now())
        )
    env = {
        connection_env_var("whippy_default"): connection_json("whippy", whippy.url, whippy_account.api_key)
    }
    return Service(name, whippy, whippy_account.sequence_id, env, whippy.stop, steps[0]["id"], behaviour)


@pytest.fixture
def service(request: pytest.FixtureRequest) -> Iterator[Service]:
    started = start_service(*request.param)
    yield started
    started.stop()


class Gate:
    """ASGI wrapper holding the n-th request that matches a method and a path.

    ``before``: the request is held before the service sees it and is dropped once released
    (it was sent and never applied). ``after``: the service applies it and the answer is held
    until released (applied; the client never learns it).
    """

    def __init__(self, app: Any, method: str, path: str, n: int, when: str) -> None:
        self.app = app
        self.method = method
        self.path = re.compile(path)
        self.n = n
        self.when = when
        self.seen = 0
        self.hit = threading.Event()
        self.released = threading.Event()
        self.done = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        matches = (
            scope["type"] == "http"
            and scope["method"] == self.method
            and self.path.fullmatch(scope["path"]) is not None
        )
        if matches:
            self.seen += 1  # the event loop is one thread
        if not matches or self.seen != self.n:
            await self.app(scope, receive, send)
            return
        try:
            if self.when == "before":
                self.hit.set()
                await self._held()
                return
            answer: list[Any] = []

            async def hold(message: Any) -> None:
                answer.append(message)

            await self.app(scope, receive, hold)
            self.hit.set()
            await self._held()
            for message in answer:
                await send(message)
        except Exception:  # noqa: S110 - the client is dead: nobody hears this answer
            pass
        finally:
            self.done.set()

    async def _held(self) -> None:
        while not self.released.is_set():
            await asyncio.sleep(0.01)


# -- the child processes ----------------------------------------------------------------------


class Forker:
    """Talks to ``crash_child.py --serve``, which forks one fresh process per run."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()
        self.started: list[int] = []

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = "?"
            while line and not line.startswith(ANSWER):  # skip what Airflow printed on import
                line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"crash_child.py --serve ended (exit status {self.process.poll()})")
        answer: dict[str, Any] = json.loads(line.removeprefix(ANSWER))
        return answer

    def start(self, config: dict[str, Any]) -> int:
        pid = int(self._ask({"op": "run", "config": config})["pid"])
        self.started.append(pid)
        return pid

    def poll(self, pid: int) -> dict[str, Any] | None:
        """How the process ended, or ``None`` while it runs."""
        answer = self._ask({"op": "poll", "pid": pid})
        return None if answer.get("running") else answer

    def wait(self, pid: int, timeout: float = PATIENCE) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (ended := self.poll(pid)) is None:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"process {pid} did not end within {timeout:.0f} s")
            time.sleep(0.02)
        return ended

    def close(self) -> None:
        """Kill what still runs (a failed test may leave a paused attempt), then stop serving."""
        for pid in self.started:
            if self.poll(pid) is None:
                os.kill(pid, signal.SIGKILL)
                self.wait(pid)
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    started = Forker()
    yield started
    started.close()


@dataclass
class Run:
    """One sync (all its attempts) of one service's source into one state database."""

    service: Service
    source: Path
    folder: Path
    attempts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.folder / 'state.db'}"

    def config(self, pause: dict[str, Any] | None = None) -> dict[str, Any]:
        self.attempts += 1
        log = self.folder / f"attempt-{self.attempts}.log"
        self.logs.append(log)
        reply = self.service.name == "reply"
        return {
            "service": self.service.name,
            "env": self.service.env,
            "sequence_id": self.service.sequence_id,
            "source": str(self.source),
            "chunk_size": REPLY_CHUNK if reply else WHIPPY_CHUNK,
            "batch_size": REPLY_BATCH if reply else WHIPPY_BATCH,
            "enrollment_timeout": WHIPPY_ENROLLMENT_TIMEOUT,
            "state_url": self.state_url,
            "run_id": RUN_ID,
            "pause": pause,
            "marker": str(self.folder / f"attempt-{self.attempts}.paused"),
            "result": str(self.folder / f"attempt-{self.attempts}.json"),
            "log": str(log),
        }

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in self.logs if log.exists())

    def start(self, forker: Forker, pause: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Start one attempt; its process id and config."""
        config = self.config(pause)
        return forker.start(config), config

    def finish(self, forker: Forker, pid: int, config: dict[str, Any]) -> dict[str, Any]:
        """Wait for an attempt started without a pause to succeed; its result."""
        ended = forker.wait(pid)
        assert ended["exit_code"] == 0, f"the attempt failed: {ended}\n{self.output()}"
        result: dict[str, Any] = json.loads(Path(config["result"]).read_text())
        return result

    def to_completion(self, forker: Forker) -> dict[str, Any]:
        """One attempt without a pause; its result."""
        return self.finish(forker, *self.start(forker))

    def state(self) -> pd.DataFrame:
        scope = Scope(self.service.name, f"{self.service.name}_default", self.service.sequence_id)
        engine = create_state_engine(self.state_url)
        try:
            return SyncState(engine, scope).to_frame().set_index("contact_key")
        finally:
            engine.dispose()


def written_items(service: Service, since: int = 0, until: int | None = None) -> int:
    """Contacts in write requests the service accepted (imports for Reply, creates for Whippy)."""
    method, path = REPLY_IMPORT if service.name == "reply" else WHIPPY_CREATE
    accepted = 200 if service.name == "reply" else 202
    return sum(
        r.items or 0
        for r in service.sim.requests[since:until]
        if r.method == method and re.fullmatch(path, r.path) and r.status == accepted
    )


def without_ids(service: Service, text: Any) -> Any:
    """A detail without the simulator's random ids (Whippy's sequence and step ids)."""
    if not isinstance(text, str) or service.name != "whippy":
        return text
    text = text.replace(service.sequence_id, "<sequence>")
    for n, step in enumerate(service.sim.sequence(service.sequence_id)["steps"], start=1):
        text = text.replace(step["id"], f"<step {n}>")
    return text


def comparable(service: Service, result: dict[str, Any], state: pd.DataFrame) -> Clean:
    not_processed = {
        key: {**outcome, "detail": without_ids(service, outcome["detail"])}
        for key, outcome in result["not_processed"].items()
    }
    state = state.assign(detail=state["detail"].map(lambda text: without_ids(service, text)))
    return Clean({**result, "not_processed": not_processed}, state, written_items(service))


@dataclass
class Clean:
    """A run's result and state, details without random ids, and the contacts it wrote."""

    result: dict[str, Any]
    state: pd.DataFrame
    written: int


CLEAN_RUNS = ("reply-documented", "reply-observed", "whippy-documented", "whippy-observed")


@pytest.fixture(scope="module")
def clean(
    forker: Forker, sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Clean]:
    """Each service's run without a crash, on its own fresh simulator: what a resume must equal.
    Keyed by service and behaviour."""
    services = {name: start_service(*name.split("-")) for name in CLEAN_RUNS}  # type: ignore[arg-type]
    try:
        runs = {
            name: Run(started, sources[started.name], tmp_path_factory.mktemp(f"clean-{name}"))
            for name, started in services.items()
        }
        attempts = {name: run.start(forker) for name, run in runs.items()}  # side by side
        return {
            name: comparable(services[name], run.finish(forker, *attempts[name]), run.state())
            for name, run in runs.items()
        }
    finally:
        for started in services.values():
            started.stop()


# -- the kill points --------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    """Where an attempt dies: a held request (``gate``: method, path, n, when) or a pause."""

    service: str
    #: Batches whose outcome the service gave and the state holds at the kill.
    acknowledged: int
    gate: tuple[str, str, int, str] | None = None
    pause: dict[str, Any] | None = None
    #: Whether the next batch is in flight: marked as being sent, its outcome not recorded.
    in_flight: bool = False
    #: Whether the service had applied the first write of the batch in flight (Reply's
    #: import, Whippy's create), so that a re-send repeats it.
    applied: bool = False


def _reply(acknowledged: int, **where: Any) -> KillPoint:
    return KillPoint("reply", acknowledged, **where)


def _whippy(acknowledged: int, **where: Any) -> KillPoint:
    return KillPoint("whippy", acknowledged, **where)


KILL_POINTS = {
    # Before anything is written: the preflight read of the sequence is in flight.
    "reply-preflight": _reply(0, gate=(*REPLY_GET_SEQUENCE, 1, "before")),
    # While reading, before the first write: rejects of the first chunk are recorded.
    "reply-reading-first-chunk": _reply(0, pause={"at": "read", "n": 1}),
    # Batch 1's contacts imported, the answer lost with the worker.
    "reply-import-1-applied": _reply(0, gate=(*REPLY_IMPORT, 1, "after"), in_flight=True, applied=True),
    # Batch 1 imported; its bulk add in flight, never applied.
    "reply-add-1-in-flight": _reply(0, gate=(*REPLY_ADD, 1, "before"), in_flight=True, applied=True),
    # Batch 1 added in Reply, the answer lost: the retry meets contactAlreadyInSequence.
    "reply-add-1-applied": _reply(0, gate=(*REPLY_ADD, 1, "after"), in_flight=True, applied=True),
    # Three batches acknowledged and recorded; the fourth's import in flight, never applied.
    "reply-after-3-batches": _reply(3, gate=(*REPLY_IMPORT, 4, "before"), in_flight=True),
    # Between batches, while reading: five batches recorded, the next rows still buffered.
    "reply-reading-after-5-batches": _reply(5, pause={"at": "read", "n": 9}),
    # Batch 7 marked as being sent in the state, no request left yet.
    "reply-batch-7-marked": _reply(6, pause={"at": "push_start", "n": 7}, in_flight=True),
    # Batch 6 answered by Reply, its outcome not yet recorded.
    "reply-batch-6-answered": _reply(5, pause={"at": "push_done", "n": 6}, in_flight=True, applied=True),
    # The last batch added in Reply, the answer lost.
    "reply-add-10-applied": _reply(9, gate=(*REPLY_ADD, 10, "after"), in_flight=True, applied=True),
    # Everything sent and recorded; the result not yet read.
    "reply-before-result": _reply(10, pause={"at": "finish", "n": 0}),
    # While reading the first chunk's worth, before any write.
    "whippy-reading-first-chunk": _whippy(0, pause={"at": "read", "n": 1}),
    # Batch 1 in flight, never applied: nothing to read back, so the retry sends it.
    "whippy-create-1-in-flight": _whippy(0, gate=(*WHIPPY_CREATE, 1, "before"), in_flight=True),
    # Batch 2 applied by Whippy, the 202 lost: the retry must read it back, not send it again.
    "whippy-create-2-applied": _whippy(1, gate=(*WHIPPY_CREATE, 2, "after"), in_flight=True, applied=True),
    # Batch 3 answered 202, not yet recorded as pending.
    "whippy-batch-3-answered": _whippy(2, pause={"at": "push_done", "n": 3}, in_flight=True, applied=True),
    # Every batch accepted and recorded pending; the read-back in flight (the first read of the
    # step contacts is the members', before the first write).
    "whippy-confirming": _whippy(3, gate=(*WHIPPY_READ_BACK, 2, "before")),
}


def _at(point: KillPoint, behaviour: str) -> KillPoint:
    """The kill point under a behaviour: observed, Whippy refuses the members' first read at
    500 a page, and the sync reads them again at 100: one more read of the step contacts."""
    gate = point.gate
    if point.service == "whippy" and behaviour == "observed" and gate and gate[:2] == WHIPPY_READ_BACK:
        return replace(point, gate=(*WHIPPY_READ_BACK, gate[2] + 1, gate[3]))
    return point


@pytest.mark.parametrize(
    ("service", "point"),
    [
        pytest.param((p.service, behaviour), _at(p, behaviour), id=f"{name}-{behaviour}")
        for name, p in KILL_POINTS.items()
        for behaviour in BEHAVIOURS
    ],
    indirect=["service"],
)
def test_killed_then_retried_equals_a_clean_run(
    service: Service,
    point: KillPoint,
    forker: Forker,
    clean: dict[str, Clean],
    sources: dict[str, Path],
    tmp_path: Path,
) -> None:
    run = Run(service, sources[service.name], tmp_path)
    gate = None
    if point.gate is not None:
        gate = Gate(service.sim.faults.app, *point.gate)
        service.sim.faults.app = gate

    # The first attempt, killed at the point.
    pid, config = run.start(forker, point.pause)
    marker = Path(config["marker"])
    deadline = time.monotonic() + PATIENCE
    try:
        while not (gate.hit.is_set() if gate is not None else marker.exists()):
            ended = forker.poll(pid)
            assert ended is None, f"the attempt ended before its kill point: {ended}\n{run.output()}"
            assert time.monotonic() < deadline, f"the kill point was not reached\n{run.output()}"
            time.sleep(0.005)
    finally:
        if forker.poll(pid) is None:
            os.kill(pid, signal.SIGKILL)
        if gate is not None:
            gate.released.set()
    assert forker.wait(pid) == {"pid": pid, "exit_code": None, "signal": signal.SIGKILL}
    if gate is not None:
        assert gate.done.wait(PATIENCE)
    if service.name == "whippy":
        service.sim.wait_idle()  # as a retry comes after Airflow's retry delay
    crashed = (
        run.state()
        if (tmp_path / "state.db").exists()
        else pd.DataFrame(columns=["status", "attempts"], dtype=object)
    )
    requests_before_retry = len(service.sim.requests)
    assert not Path(config["result"]).exists()

    # The kill came where it was meant to: so many batches recorded, the next in flight. The
    # engine sends one batch while it records the one before and prepares the next, so at a
    # kill the newest answered batch may not be recorded yet, and one more batch may be marked
    # as being sent without having left: one batch of slack each way, never more.
    reference = clean[f"{service.name}-{service.behaviour}"]
    batch = REPLY_BATCH if service.name == "reply" else WHIPPY_BATCH
    sent_before = crashed[pd.to_numeric(crashed["attempts"]) > 0]
    if service.name == "whippy":
        # Members of the sequence before the first night: recorded with their batch, never written.
        sent_before = sent_before.drop(list(WHIPPY_ELSEWHERE), errors="ignore")
    in_flight = set(sent_before.index[sent_before["status"] == SENDING])
    acknowledged = sent_before[sent_before["status"] != SENDING]
    expected = min(point.acknowledged * batch, reference.written)
    assert expected - batch <= len(acknowledged) <= expected
    assert len(in_flight) <= 2 * batch
    if point.in_flight:
        assert in_flight
    # What the first attempt wrote beyond its recorded batches: the batch the kill caught, if
    # the service had applied its first write, and an answered batch not yet recorded.
    first_written = written_items(service, until=requests_before_retry)
    applied_in_flight = first_written - len(acknowledged)
    assert 0 <= applied_in_flight <= 2 * batch
    if point.applied:
        assert applied_in_flight > 0

    # The retry, as Airflow runs it: same run id, to the end.
    retried = comparable(service, run.to_completion(forker), run.state())
    result, state = retried.result, retried.state

    # The result covers every key exactly once and equals the clean run's.
    stats = result["stats"]
    added, not_processed = set(result["added"]), result["not_processed"]
    assert len(added) == len(result["added"])
    assert not added & set(not_processed)
    assert stats["rows"] == (
        stats["added"] + stats["not_processed"] + stats["duplicates"] + stats.get("unchanged", 0)
    )
    assert added == set(reference.result["added"])
    assert not_processed == reference.result["not_processed"]
    for name in ("rows", "duplicates", "added", "not_processed", "unchanged"):
        assert stats.get(name, 0) == reference.result["stats"].get(name, 0), name
    assert stats.get("resumed", 0) == int(crashed["status"].isin([ADDED, NOT_PROCESSED]).sum())

    # The sync state equals the clean run's: one record per key, nothing left in flight.
    columns = ["status", "reason", "detail", "fingerprint", "service_contact_id", "last_run_id"]
    pd.testing.assert_frame_equal(
        state[columns].sort_index(), reference.state[columns].sort_index(), check_like=True
    )
    assert set(state["status"]) <= {ADDED, NOT_PROCESSED}
    assert set(state.index) == added | set(not_processed)

    # Ground truth: every added key enrolled, nobody enrolled twice.
    enrolments = service.sim.enrolments
    assert set(enrolments.values()) == {1}
    if service.name == "reply":
        # No bulk add named a contact already in the sequence: the retry read it first.
        assert service.sim.readds == {}
        sequence_id = int(service.sequence_id)
        enrolled = {
            str(service.sim.contact(contact_id)["email"]).lower(): contact_id
            for (sequence, contact_id), _ in enrolments.items()
            if sequence == sequence_id
        }
        assert set(enrolled) == added
        # The recorded contact ids are Reply's own.
        assert {key: int(state.at[key, "service_contact_id"]) for key in added} == enrolled
    else:
        step_contacts = service.sim.step_contacts(service.sequence_id)
        first_step = [item for item in step_contacts if item["step_id"] == service.step_id]
        assert {item["contact"]["phone"] for item in first_step} == added
        assert len(first_step) == len(added)

    # Acknowledged work is not sent again; only the batch in flight at the kill may be.
    written_by_retry = written_items(service, since=requests_before_retry)
    if service.name == "reply":
        # Keys whose outcome was recorded are not sent again; the batch in flight is imported
        # again, and only its contacts not in the sequence are added.
        done = acknowledged[acknowledged["status"] != PENDING]
        assert written_by_retry == reference.written - len(done)
    else:
        # Whippy is never sent a contact twice: what it accepted before the kill (pending, or
        # a batch applied whose answer was lost) is read back and confirmed, not sent again;
        # a batch that never reached it is sent by the retry.
        assert written_by_retry == reference.written - first_written
        assert written_items(service) == reference.written
        if point.applied:
            assert in_flight <= added
