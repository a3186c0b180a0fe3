"""Behaviour both hooks share: URLs, secrets, retries, rate limits, Test Connection."""

from __future__ import annotations

import logging
import time

import pytest

from airflow_provider_sequences.exceptions import OutcomeUnknownError, SequencesApiError
from airflow_provider_sequences.hooks.base import resolve_base_url
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.testing import connection_env_var, connection_json
from airflow_provider_sequences.testing.faults import FaultPlan


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


@pytest.mark.reply_simulator(time_scale=60)
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
