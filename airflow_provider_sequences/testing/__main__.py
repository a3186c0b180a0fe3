"""Run the simulators from a shell: ``python -m airflow_provider_sequences.testing --help``."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from airflow_provider_sequences.testing.accounts import (
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
    simulator_connection_extra,
)
from airflow_provider_sequences.testing.base import BEHAVIOURS, DEFAULT_BEHAVIOUR, Simulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_sequences.testing",
        description="Serve simulators of the Reply.io and Whippy APIs on loopback, each with a ready "
        "account, and print the Airflow connections that reach them. Ctrl-C stops them.",
    )
    parser.add_argument("service", choices=["reply", "whippy", "both"], nargs="?", default="both")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--reply-port", type=int, default=8123)
    parser.add_argument("--whippy-port", type=int, default=8124)
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="simulated seconds per real second for rate limits"
    )
    parser.add_argument("--no-rate-limits", action="store_true", help="never answer 429 for volume")
    parser.add_argument(
        "--processing-delay", type=float, default=0.0, help="Whippy: seconds before background work runs"
    )
    parser.add_argument(
        "--behaviour",
        choices=BEHAVIOURS,
        default=DEFAULT_BEHAVIOUR,
        help="answer as the reference docs say (documented) or as the services' own clients "
        "report the real servers do (observed); default documented",
    )
    parser.add_argument(
        "--request-log", metavar="DIR", help="write each simulator's request log here on exit"
    )
    return parser


def _print_export(conn_id: str, value: str) -> None:
    print(f"  export {connection_env_var(conn_id)}='{value}'")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    common: dict[str, Any] = {
        "time_scale": args.time_scale,
        "enforce_rate_limits": not args.no_rate_limits,
        "behaviour": args.behaviour,
    }
    extra = simulator_connection_extra(args.time_scale)
    running: list[tuple[str, Simulator]] = []
    if args.service in ("reply", "both"):
        from airflow_provider_sequences.testing.reply import ReplySimulator

        reply = ReplySimulator(**common).start(args.host, args.reply_port)
        account = seed_reply_account(reply)
        running.append(("reply", reply))
        print(
            f"Reply simulator ({args.behaviour}) on {reply.url}: user {account.user_id}, "
            f"sequence {account.sequence_id}"
        )
        _print_export("reply_default", connection_json("reply", reply.url, account.api_key, **extra))
    if args.service in ("whippy", "both"):
        from airflow_provider_sequences.testing.whippy import WhippySimulator

        whippy = WhippySimulator(processing_delay=args.processing_delay, **common).start(
            args.host, args.whippy_port
        )
        w_account = seed_whippy_account(whippy)
        running.append(("whippy", whippy))
        print(
            f"Whippy simulator ({args.behaviour}) on {whippy.url}: channel {w_account.channel_phone}, "
            f"SMS sequence {w_account.sequence_id}, email sequence {w_account.email_sequence_id}"
        )
        _print_export("whippy_default", connection_json("whippy", whippy.url, w_account.api_key, **extra))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for name, sim in running:
            if args.request_log:
                sim.faults.dump_log(f"{args.request_log}/{name}-requests.jsonl")
            sim.stop()


if __name__ == "__main__":
    main()
