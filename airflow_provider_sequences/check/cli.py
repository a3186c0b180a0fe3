"""The command line of the contract check; see the package docstring."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from airflow_provider_sequences.check.base import CheckAborted, ServiceCheck
from airflow_provider_sequences.check.report import Recorder, Report

EXIT_HELD, EXIT_VIOLATED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command cannot run as asked: exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_sequences.check",
        description="Check that a Reply.io or Whippy account answers the way the sync assumes, through "
        "the Airflow connection the sync will use. Read-only unless --write-test-contact is given. "
        "Exit status: 0 every assumption held or was not seen, 1 one was violated, 2 the check "
        "could not run.",
    )
    parser.add_argument("--conn-id", required=True, help="the Airflow connection (type reply or whippy)")
    parser.add_argument(
        "--sequence-id", help="the sequence to read (and write to); default: the first one listed"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the answers' shapes (JSON); default: sequences-check-<service>.json",
    )
    parser.add_argument(
        "--write-test-contact",
        metavar="EMAIL_OR_PHONE",
        help="enrol this contact into --sequence-id and read it back (Reply: an email; Whippy: a "
        "phone with its +country code). It is a real enrolment: use a test sequence",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="Whippy: seconds to wait for the test contact to show in the sequence (default 120)",
    )
    parser.add_argument(
        "--no-probes",
        action="store_true",
        help="send no request that the service must refuse (empty import and bulk add, a contact "
        "without a phone); only reads",
    )
    return parser


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the check; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.write_test_contact is not None and args.sequence_id is None:
        print("error: --write-test-contact needs --sequence-id (a test sequence)", file=err)
        return EXIT_USAGE
    try:
        check, service, where = _build(args)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    report = check.report
    print(f"{service} contract check of connection {args.conn_id!r} at {where}", file=out)
    status = EXIT_HELD
    try:
        check.run()
    except CheckAborted as exc:
        print(f"error: {exc}", file=err)
        status = EXIT_USAGE
    report.print(out)
    path = args.out or Path(f"sequences-check-{check.service}.json")
    report.write(path)
    print(f"Answer shapes (no values) written to {path}", file=out)
    if status == EXIT_HELD and report.any_violated:
        status = EXIT_VIOLATED
    return status


def _build(args: argparse.Namespace) -> tuple[ServiceCheck[Any], str, str]:
    """The check for the connection's service, or a :class:`UsageError`."""
    from airflow.sdk import BaseHook

    try:
        connection = BaseHook.get_connection(args.conn_id)
    except Exception as exc:
        # The message is not shown: a malformed connection could echo its password.
        what = (
            "is not defined" if "NotFound" in type(exc).__name__ else f"cannot be read ({type(exc).__name__})"
        )
        raise UsageError(f"connection {args.conn_id!r} {what}") from None
    conn_type = (connection.conn_type or "").lower()
    recorder = Recorder()
    contact = args.write_test_contact
    try:
        if conn_type == "reply":
            from airflow_provider_sequences.check.reply import ReplyCheck
            from airflow_provider_sequences.hooks.reply import ReplyHook

            reply_hook = ReplyHook(args.conn_id)
            reply = ReplyCheck(
                reply_hook,
                Report("reply", recorder),
                sequence_id=_reply_sequence_id(args.sequence_id),
                test_email=None if contact is None else _email(contact),
                probes=not args.no_probes,
            )
            return reply, "Reply.io", reply_hook.base_url
        if conn_type == "whippy":
            from airflow_provider_sequences.check.whippy import WhippyCheck
            from airflow_provider_sequences.hooks.whippy import WhippyHook

            whippy_hook = WhippyHook(args.conn_id)
            whippy = WhippyCheck(
                whippy_hook,
                Report("whippy", recorder),
                sequence_id=args.sequence_id,
                test_phone=None if contact is None else _phone(contact),
                probes=not args.no_probes,
                wait=args.wait,
            )
            return whippy, "Whippy", whippy_hook.base_url
    except ValueError as exc:
        # The hooks' own messages: no key, a plain-http host; they never hold the key.
        raise UsageError(str(exc)) from None
    raise UsageError(
        f"connection {args.conn_id!r} has type {connection.conn_type!r}: the check knows 'reply' and 'whippy'"
    )


def _reply_sequence_id(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise UsageError(f"a Reply sequence id is a positive integer, got {raw!r}")
    return int(raw)


def _email(raw: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        raise UsageError("Reply enrols a test contact by email: give an email address") from None


def _phone(raw: str) -> str:
    import phonenumbers

    try:
        number = phonenumbers.parse(raw.strip(), None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise UsageError("Whippy enrols a test contact by phone: give a valid number with its +country code")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
