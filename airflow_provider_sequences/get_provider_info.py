"""Provider metadata read by Airflow's ProvidersManager through the entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_sequences import __version__


def _number(label: str, default: float, description: str) -> dict[str, Any]:
    return {
        "label": label,
        "schema": {"type": ["number", "null"], "default": default},
        "description": description,
    }


_COMMON_FIELDS: dict[str, Any] = {
    "timeout": _number("Read timeout (s)", 60, "Seconds to wait for an answer before retrying."),
    "max_attempts": _number("Attempts per request", 6, "Including the first; retries back off."),
    "request_deadline": _number(
        "Request deadline (s)", 300, "One request, from connecting to the answer's last byte."
    ),
    "max_answer_mb": _number("Largest answer (MB)", 64, "A larger answer is a transient failure."),
    "max_retry_wait": _number(
        "Longest wait asked for (s)",
        900,
        "When the service asks to wait longer before retrying, the run stops; a later run resumes.",
    ),
    "rate_limit_conn_id": {
        "label": "Rate budget connection",
        "schema": {"type": ["string", "null"]},
        "description": "A postgres or redis connection holding this account's rate budget, shared by "
        "every machine; empty: a file shared by this machine's processes.",
    },
    "rate_limit_time_scale": _number(
        "Rate-limit time scale", 1, "Leave at 1. Simulators only: shortens the limit windows."
    ),
}


def get_provider_info() -> dict[str, Any]:
    """What the provider brings: its connection types, hooks and forms."""
    return {
        "package-name": "airflow-provider-sequences",
        "name": "Sequences (Reply.io, Whippy)",
        "description": "Enrol contacts from CRM exports into Reply.io and Whippy sequences.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Reply.io", "external-doc-url": "https://docs.reply.io/api-reference"},
            {"integration-name": "Whippy", "external-doc-url": "https://docs.whippy.ai"},
        ],
        "hooks": [
            {"integration-name": "Reply.io", "python-modules": ["airflow_provider_sequences.hooks.reply"]},
            {"integration-name": "Whippy", "python-modules": ["airflow_provider_sequences.hooks.whippy"]},
        ],
        "operators": [
            {
                "integration-name": "Reply.io",
                "python-modules": ["airflow_provider_sequences.operators.reply"],
            },
            {
                "integration-name": "Whippy",
                "python-modules": ["airflow_provider_sequences.operators.whippy"],
            },
        ],
        "triggers": [
            {
                "integration-name": "Whippy",
                "python-modules": ["airflow_provider_sequences.triggers.whippy"],
            }
        ],
        "extra-links": [
            "airflow_provider_sequences.links.SequenceLink",
            "airflow_provider_sequences.links.SyncReportLink",
        ],
        "connection-types": [
            {
                "connection-type": "reply",
                "hook-class-name": "airflow_provider_sequences.hooks.reply.ReplyHook",
                "hook-name": "Reply.io",
                "conn-fields": {
                    "acting_user_id": {
                        "label": "Acting user id",
                        "schema": {"type": ["string", "null"]},
                        "description": "Act as this team member (X-User-Id); needed with an org key.",
                    },
                    "acting_user_email": {
                        "label": "Acting user email",
                        "schema": {"type": ["string", "null"]},
                        "description": "Act as this team member by email (X-User-Email), if no id is set.",
                    },
                    "acting_team_id": {
                        "label": "Acting team id",
                        "schema": {"type": ["string", "null"]},
                        "description": "The team to act in (X-Team-Id): needed with an acting user email, "
                        "or a key that reaches several teams.",
                    },
                    "requests_per_minute": _number(
                        "Requests per minute", 100, "Reply allows 100 per user; lower it to leave room."
                    ),
                    "requests_per_hour": _number(
                        "Requests per hour", 3000, "Reply allows 3,000 per user; lower it to leave room."
                    ),
                    **_COMMON_FIELDS,
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": "https://api.reply.io"},
                },
            },
            {
                "connection-type": "whippy",
                "hook-class-name": "airflow_provider_sequences.hooks.whippy.WhippyHook",
                "hook-name": "Whippy",
                "conn-fields": {
                    "organization_id": {
                        "label": "Organization id",
                        "schema": {"type": ["string", "null"]},
                        "description": "Connections naming the same organization share its sync state "
                        "and rate budget.",
                    },
                    "sequence_writes_per_minute": _number(
                        "Sequence writes per minute", 10, "Whippy allows 10 per key on sequence endpoints."
                    ),
                    "requests_per_second": _number(
                        "Other requests per second", 25, "Whippy allows 25 per key on most endpoints."
                    ),
                    **_COMMON_FIELDS,
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {"host": "https://api.whippy.co"},
                },
            },
        ],
    }
