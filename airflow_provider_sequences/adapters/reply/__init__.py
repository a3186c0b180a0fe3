"""The Reply.io adapter (:mod:`.adapter`) and its request items (:mod:`.items`)."""

from airflow_provider_sequences.adapters.reply.adapter import ReplyAdapter
from airflow_provider_sequences.adapters.reply.items import (
    CUSTOM_FIELDS,
    REPLY_CONTACT_FIELDS,
    ReplyEnrolment,
    contact_items,
    reply_rules,
)

__all__ = [
    "CUSTOM_FIELDS",
    "REPLY_CONTACT_FIELDS",
    "ReplyAdapter",
    "ReplyEnrolment",
    "contact_items",
    "reply_rules",
]
