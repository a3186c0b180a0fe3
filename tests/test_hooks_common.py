"""Behaviour both hooks share: URLs, secrets, retries, rate limits, Test Connection."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest

from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    RetryWaitTooLongError,
    SequencesApiError,
    UnexpectedAnswerError,
)
from airflow_provider_sequences.hooks.base import resolve_base_url
from airflow_provider_sequences.hooks.reply import ReplyHook, reply_sequence_id
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.testing import connection_env_var, connection_json
from airflow_provider_sequences.testing.faults import FaultPlan
from tests.http_stub import Answer, Seen, StubServer, json_answer


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.reply.io"),
        ("", "https://api.reply.io"),
        ("api.reply.io", "https://api.reply.io"),
        ("https://api.reply.io/v3/", "https://api.reply.io"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://localhost:8123/v3", "http://localhost:8123"),
        ("http://[::1]:8123", "http://[::1]:8123"),
        ("https://proxy.example.com/reply", "https://proxy.example.com/reply"),
    ],
)
def test_base_url_from_the_connection_host(host: str | None, expected: str) -> None:
    assert resolve_base_url(host, None, "https://api.reply.io", "/v3") == expected


@pytest.mark.parametrize("host", ["http://api.reply.io", "http://10.0.0.5:8123", "http://example.com"])
def test_plain_http_to_a_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="refusing plain http"):
        resolve_base_url(host, None, "https://api.reply.io", "/v3")


def test_hook_with_plain_http_host_fails_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        connection_env_var("reply_default"), connection_json("reply", "http://example.com", "k")
    )
    hook = ReplyHook()
    with pytest.raises(ValueError, match=r"connection 'reply_default': refusing plain http to example\.com"):
        hook.whoami()
    ok, message = hook.test_connection()
    assert not ok
    assert "refusing plain http" in message


def test_the_connection_id_is_kept_under_the_hooks_conn_name_attr() -> None:
    # Airflow's convention: tools (and subclasses) find the id under conn_name_attr.
    assert ReplyHook("crm_reply").reply_conn_id == "crm_reply"
    assert WhippyHook().whippy_conn_id == "whippy_default"
    assert ReplyHook("crm_reply").conn_id == "crm_reply"


def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        connection_env_var("whippy_default"), connection_json("whippy", "http://127.0.0.1:9", "")
    )
    with pytest.raises(ValueError, match="has no API key: put the Whippy key in its password"):
        WhippyHook().list_channels()


def test_test_connection_true_and_false(reply_connection: str, whippy_connection: str) -> None:
    ok, message = ReplyHook().test_connection()
    assert ok, message
    assert "as user" in message
    ok, message = WhippyHook().test_connection()
    assert ok, message
    assert "1 channels" in message


def test_test_connection_with_a_bad_key(
    reply_simulator: object, whippy_simulator: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for conn_type, sim in (("reply", reply_simulator), ("whippy", whippy_simulator)):
        monkeypatch.setenv(
            connection_env_var(f"{conn_type}_default"),
            connection_json(conn_type, sim.url, "wrong-key"),  # type: ignore[attr-defined]
        )
    for hook in (ReplyHook(), WhippyHook()):
        ok, message = hook.test_connection()
        assert not ok
        assert "rejected the API key (401)" in message


def test_bad_key_raises_401_without_retrying(reply_simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        connection_env_var("reply_default"), connection_json("reply", reply_simulator.url, "wrong-key")
    )
    with pytest.raises(SequencesApiError) as caught:
        ReplyHook().whoami()
    assert caught.value.status == 401
    assert [r.status for r in reply_simulator.requests] == [401]


@pytest.mark.usefixtures("reply_connection")
def test_server_errors_are_retried_then_succeed(reply_simulator) -> None:
    reply_simulator.faults.force("server_error", "server_error")
    assert "userId" in ReplyHook().whoami()
    assert [r.status for r in reply_simulator.requests] == [500, 500, 200]


@pytest.mark.usefixtures("whippy_connection")
def test_dropped_connection_on_a_read_is_retried(whippy_simulator) -> None:
    whippy_simulator.faults.force("reset")
    assert WhippyHook().list_channels()["total"] == 1
    assert [r.fault for r in whippy_simulator.requests] == ["reset", None]


@pytest.mark.usefixtures("reply_connection")
def test_injected_429_is_honoured_with_its_wait(reply_simulator) -> None:
    reply_simulator.faults.configure(FaultPlan(rate_limit_wait=1.0))
    reply_simulator.faults.force("rate_limit")
    started = time.monotonic()
    ReplyHook().whoami()
    assert time.monotonic() - started >= 1.0
    assert [r.status for r in reply_simulator.requests] == [429, 200]


# A scaled minute of five seconds: the 101 requests fit in it even on a loaded machine.
@pytest.mark.serial
@pytest.mark.reply_simulator(time_scale=12)
def test_reply_429_from_the_real_limit_is_honoured(reply_simulator, reply_account, monkeypatch) -> None:
    # The client's own limiter is opened wide so the simulator's limit is what stops it.
    monkeypatch.setenv(
        connection_env_var("reply_default"),
        connection_json(
            "reply",
            reply_simulator.url,
            reply_account.api_key,
            requests_per_minute=10_000,
            requests_per_hour=10_000,
        ),
    )
    hook = ReplyHook()
    for _ in range(101):
        hook.whoami()
    statuses = [r.status for r in reply_simulator.requests]
    assert statuses.count(429) == 1
    assert statuses.count(200) == 101


@pytest.mark.serial
@pytest.mark.reply_simulator(time_scale=60)
@pytest.mark.usefixtures("reply_connection")
def test_reply_burst_stays_under_the_limit_without_a_429(reply_simulator) -> None:
    hook = ReplyHook()
    started = time.monotonic()
    for _ in range(250):
        hook.whoami()
    elapsed = time.monotonic() - started
    assert [r.status for r in reply_simulator.requests].count(429) == 0
    # 100 per (scaled) minute of one second: 250 requests need two full windows.
    assert elapsed >= 2.0


@pytest.mark.serial
@pytest.mark.whippy_simulator(time_scale=60)
def test_whippy_sequence_writes_stay_under_the_limit_without_a_429(
    whippy_simulator, whippy_account, whippy_connection
) -> None:
    hook = WhippyHook()
    started = time.monotonic()
    for i in range(25):
        hook.create_sequence_contacts(whippy_account.sequence_id, [{"phone": f"+1415555{i:04d}"}])
        hook.list_channels()  # reads draw from the other bucket and are not slowed down
    elapsed = time.monotonic() - started
    statuses = [r.status for r in whippy_simulator.requests]
    assert statuses.count(429) == 0
    assert statuses.count(202) == 25
    # 10 writes per (scaled) minute of one second: 25 writes need two full windows.
    assert elapsed >= 2.0


@pytest.mark.usefixtures("whippy_connection")
def test_whippy_lost_write_is_not_retried_blindly(whippy_simulator, whippy_account) -> None:
    whippy_simulator.faults.force("lost_response")
    with pytest.raises(OutcomeUnknownError, match="may or may not have been applied"):
        WhippyHook().create_sequence_contacts(whippy_account.sequence_id, [{"phone": "+14155550001"}])
    assert len(whippy_simulator.requests) == 1
    whippy_simulator.wait_idle()
    # The write was applied: re-sending it blindly would have messaged this contact twice.
    assert sum(whippy_simulator.enrolments.values()) == 1


@pytest.mark.usefixtures("reply_connection")
def test_reply_lost_bulk_add_is_not_repeated(reply_simulator, reply_account) -> None:
    # Reply's CLI: naming a member again may move it on; the caller reads the sequence instead.
    hook = ReplyHook()
    contact_id = hook.import_contacts([{"email": "ada@example.com", "firstName": "Ada"}])["items"][0]["id"]
    reply_simulator.faults.force("lost_response")
    with pytest.raises(OutcomeUnknownError):
        hook.add_contacts_to_sequence(reply_account.sequence_id, [contact_id])
    assert reply_simulator.enrolments == {(reply_account.sequence_id, contact_id): 1}
    assert [r.fault for r in reply_simulator.requests if r.path.endswith("/bulk")] == ["lost_response"]


def test_the_key_never_reaches_logs_or_exceptions(
    reply_simulator, whippy_simulator, monkeypatch, caplog
) -> None:
    key = "sk-live-DISTINCTIVE-7f3a9c"
    reply_simulator.add_api_key(key, user_id=reply_simulator.add_user("secret@example.com"))
    whippy_simulator.add_api_key(key)
    monkeypatch.setenv(
        connection_env_var("reply_default"), connection_json("reply", reply_simulator.url, key)
    )
    monkeypatch.setenv(
        connection_env_var("whippy_default"), connection_json("whippy", whippy_simulator.url, key)
    )
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    reply_simulator.faults.force("server_error", "rate_limit", "reset")
    ReplyHook().whoami()
    for call in (
        lambda: ReplyHook().get_sequence(424242),
        lambda: WhippyHook().get_sequence("nope"),
        lambda: WhippyHook().create_sequence_contacts("nope", [{"phone": "+14155550001"}]),
    ):
        with pytest.raises(SequencesApiError) as caught:
            call()
        texts += [str(caught.value), repr(caught.value), repr(caught.value.__dict__)]
    assert caplog.records, "debug logging should have captured the requests"
    assert key not in caplog.text
    for text in texts:
        assert key not in text
    assert "/v3/whoami" in caplog.text


def test_a_refused_connection_is_reported_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 (discard) on loopback is closed here: nothing was sent, so retrying was safe.
    monkeypatch.setenv(
        connection_env_var("reply_default"),
        connection_json("reply", "http://127.0.0.1:9", "k", max_attempts=2),
    )
    with pytest.raises(
        SequencesApiError, match=r"no answer \(connectionFailed\): ConnectionError talking to 127.0.0.1:9"
    ):
        ReplyHook().whoami()


def test_exceptions_survive_pickling() -> None:
    import pickle

    error = OutcomeUnknownError(
        service="Whippy", method="POST", path="/v1/x", status=None, code="connectionFailed"
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert isinstance(copy, OutcomeUnknownError)
    assert str(copy) == str(error)


# -- answers that could hang a run, flood it or send it astray (scripted loopback servers) --------


def _stub_hook(
    service: str, url: str, monkeypatch: pytest.MonkeyPatch, **extra: object
) -> ReplyHook | WhippyHook:
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    extra.setdefault("max_attempts", 2)
    monkeypatch.setenv(
        connection_env_var(f"{service}_default"), connection_json(service, url, "key-123", **extra)
    )
    return ReplyHook() if service == "reply" else WhippyHook()


def _then_ok(first: Answer, ok: object) -> Callable[[Seen], Answer]:
    """``first`` for the first request, then ``ok`` as JSON."""

    def script(seen: Seen) -> Answer:
        return first if len(stub_seen(seen)) == 1 else json_answer(ok)

    return script


_seen_by_script: dict[int, list[Seen]] = {}


def stub_seen(seen: Seen) -> list[Seen]:
    bucket = _seen_by_script.setdefault(0, [])
    bucket.append(seen)
    return bucket


@pytest.fixture(autouse=True)
def _fresh_script_counts() -> None:
    _seen_by_script.clear()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("service", "header", "value"),
    [
        ("reply", "Retry-After", "36000"),
        ("whippy", "X-RateLimit-Remaining-Interval-Milliseconds", "36000000"),
    ],
)
def test_a_wait_longer_than_max_retry_wait_stops_clearly(
    service: str, header: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StubServer(lambda seen: json_answer({}, 429, **{header: value})) as stub:
        hook = _stub_hook(service, stub.url, monkeypatch, max_attempts=5)
        started = time.monotonic()
        with pytest.raises(RetryWaitTooLongError) as caught:
            hook.whoami() if isinstance(hook, ReplyHook) else hook.list_channels()
        assert len(stub.seen) == 1
    assert time.monotonic() - started < 10
    assert caught.value.retry_after == 36000
    assert "asked to wait 10 h 0 min" in str(caught.value)
    assert "max_retry_wait (15 min)" in str(caught.value)
    assert "a later run resumes" in str(caught.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("service", "value"),
    [
        ("reply", "-5"),
        ("reply", "nan"),
        ("reply", "inf"),
        ("reply", "1e400"),
        ("whippy", "-5000"),
        ("whippy", "nan"),
        ("whippy", "inf"),
    ],
)
def test_a_malformed_wait_falls_back_to_the_usual_backoff(
    service: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = "Retry-After" if service == "reply" else "X-RateLimit-Remaining-Interval-Milliseconds"
    ok = {"userId": 7} if service == "reply" else {"data": [], "total": 0}
    with StubServer(_then_ok(json_answer({}, 429, **{header: value}), ok)) as stub:
        hook = _stub_hook(service, stub.url, monkeypatch)
        answer = hook.whoami() if isinstance(hook, ReplyHook) else hook.list_channels()
        assert answer == ok
        assert len(stub.seen) == 2


@pytest.mark.timeout(60)
def test_a_trickled_answer_ends_at_the_request_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"userId": 7, "pad": "x" * 40}).encode()
    with StubServer(lambda seen: Answer(200, body, trickle=0.1)) as stub:
        hook = _stub_hook("reply", stub.url, monkeypatch, request_deadline=1, max_attempts=1)
        started = time.monotonic()
        with pytest.raises(SequencesApiError, match="request deadline of 1 s") as caught:
            hook.whoami()
    assert time.monotonic() - started < 3
    assert caught.value.code == "connectionFailed"


@pytest.mark.timeout(60)
def test_a_trickled_answer_to_a_write_not_safe_to_repeat_is_an_unknown_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with StubServer(
        lambda seen: Answer(202, b'{"accepted": true, "pad": "xxxxxxxxxxxxxxxxxxxx"}', trickle=0.1)
    ) as stub:
        hook = _stub_hook("whippy", stub.url, monkeypatch, request_deadline=1)
        started = time.monotonic()
        with pytest.raises(OutcomeUnknownError, match="request deadline"):
            hook.create_sequence_contacts("seq_1", [{"phone": "+14155550123"}])
        assert len(stub.seen) == 1  # not sent again blindly
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
def test_an_answer_over_the_size_cap_is_refused(chunked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"userId": 7, "pad": "x" * (2 * 1024 * 1024)}).encode()
    with StubServer(lambda seen: Answer(200, body, chunked=chunked)) as stub:
        hook = _stub_hook("reply", stub.url, monkeypatch, max_answer_mb=1)
        with pytest.raises(
            UnexpectedAnswerError, match="larger than the connection's max_answer_mb"
        ) as caught:
            hook.whoami()
        assert len(stub.seen) == 1  # the same answer would come again: not retried
    assert caught.value.is_retryable


def _endless(page: dict[str, object], limit: int = 200) -> Callable[[Seen], Answer]:
    """The same page again and again; after ``limit`` requests an empty last page, so that code
    that pages forever ends (and the test sees it paged far too much)."""

    def script(seen: Seen) -> Answer:
        if len(stub_seen(seen)) > limit:
            return json_answer({"items": [], "hasMore": False, "data": [], "total": 0})
        return json_answer(page)

    return script


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("service", "page", "problem"),
    [
        ("reply", {"items": [{"id": 1}], "hasMore": True}, "repeats an earlier page"),
        ("reply", {"items": [], "hasMore": True}, "empty page at offset 0 while the service says more"),
        ("whippy", {"data": [{"id": "s1"}], "total": 1_000_000}, "repeats an earlier page"),
        ("whippy", {"data": [], "total": 10}, "empty page at offset 0 while the service says more"),
    ],
)
def test_paging_stops_on_contradictions(
    service: str, page: dict[str, object], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StubServer(_endless(page)) as stub:
        hook = _stub_hook(service, stub.url, monkeypatch)
        with pytest.raises(UnexpectedAnswerError, match=problem):
            hook.list_sequences() if isinstance(hook, ReplyHook) else list(hook.iter_sequences())
        assert len(stub.seen) <= 2


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'"text"'], ids=["empty", "null", "list", "string"])
def test_an_answer_of_the_wrong_shape_is_a_transient_error(
    body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StubServer(lambda seen: Answer(200, body, {"Content-Type": "application/json"})) as stub:
        hook = _stub_hook("reply", stub.url, monkeypatch)
        with pytest.raises(UnexpectedAnswerError, match="unexpected shape") as caught:
            hook.whoami()
    assert caught.value.is_retryable
    assert not caught.value.rejects_request


@pytest.mark.parametrize(
    ("answer", "problem"),
    [(Answer(202), "202 .background job. without a Location"), (Answer(200, b""), "unexpected shape")],
    ids=["202-without-location", "empty-body"],
)
def test_a_reply_import_answer_of_the_wrong_shape_is_transient(
    answer: Answer, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StubServer(lambda seen: answer) as stub:
        hook = _stub_hook("reply", stub.url, monkeypatch)
        with pytest.raises(UnexpectedAnswerError, match=problem):
            hook.import_contacts([{"email": "a@example.com", "firstName": "A"}])
        assert [seen.method for seen in stub.seen] == ["POST"]


@pytest.mark.parametrize("sequence_id", ["../../v1/admin", "abc?x=1#", "a/b", " "])
def test_a_whippy_id_that_would_reach_another_path_is_refused(
    sequence_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StubServer(lambda seen: json_answer({"data": {"id": "x", "steps": []}})) as stub:
        hook = _stub_hook("whippy", stub.url, monkeypatch)
        assert isinstance(hook, WhippyHook)
        with pytest.raises(ValueError, match="Whippy sequence id"):
            hook.get_sequence(sequence_id)
        with pytest.raises(ValueError, match="Whippy sequence id"):
            hook.create_sequence_contacts(sequence_id, [{"phone": "+14155550123"}])
        assert stub.seen == []


def test_a_whippy_id_is_escaped_as_one_path_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    with StubServer(lambda seen: json_answer({"data": [], "total": 0})) as stub:
        hook = _stub_hook("whippy", stub.url, monkeypatch)
        assert isinstance(hook, WhippyHook)
        hook.list_sequence_contacts("seq;1%2F")
        assert stub.seen[0].path.split("?")[0] == "/v1/sequences/seq%3B1%252F/contacts"


@pytest.mark.parametrize("given", ["", "  ", "abc", "0", "-3", "12.5", "1001/contacts", True])
def test_a_reply_sequence_id_that_is_not_a_positive_integer_is_refused(given: object) -> None:
    with pytest.raises(ValueError, match="Reply sequence"):
        reply_sequence_id(given)


@pytest.mark.parametrize("hook_class", [ReplyHook, WhippyHook])
def test_a_fresh_worker_process_reads_its_env_var_connection(
    hook_class: type[ReplyHook | WhippyHook],
) -> None:
    """A worker process with the deployment's fernet key finds an ``AIRFLOW_CONN_*`` connection
    on its first lookup. On Airflow 3.1 with cryptography 51 the first decryption in a process
    failed and Airflow reported the connection as not defined."""
    import os
    import subprocess
    import sys

    from cryptography.fernet import Fernet

    env = {
        **os.environ,
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        connection_env_var("fresh_process"): connection_json(
            hook_class.conn_type, "http://127.0.0.1:9", "key-123"
        ),
    }
    code = (
        f"from {hook_class.__module__} import {hook_class.__name__} as Hook\n"
        "hook = Hook('fresh_process')\n"
        "print(hook.base_url, hook.api_key == 'key-123')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["http://127.0.0.1:9", "True"]
