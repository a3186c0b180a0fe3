"""Operator that enrols contacts from an upstream table into a Reply.io sequence."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetAlias

from airflow_provider_sequences.adapters.base import HookAdapter
from airflow_provider_sequences.adapters.reply import ReplyAdapter, ReplyEnrolment
from airflow_provider_sequences.hooks.reply import ReplyHook, reply_sequence_id
from airflow_provider_sequences.links import SequenceLink, SyncReportLink
from airflow_provider_sequences.operators.base import SequenceSyncOperator
from airflow_provider_sequences.sync.prepare import PrepareSpec


def reply_sequence_asset(sequence_id: Any) -> Asset:
    """The Asset a sync into this Reply sequence updates, for data-aware scheduling."""
    return Asset(uri=f"reply://sequences/{sequence_id}", name=f"reply-sequence-{sequence_id}")


class ReplyAddContactsToSequenceOperator(SequenceSyncOperator):
    """Enrol contacts from a table into a Reply.io sequence, in bulk.

    Rows carrying Reply contact ids (``contact_id_column``) go straight to the bulk add, 1,000
    per request. Otherwise rows carry emails: they are imported in bulk (an upsert matched by
    email) to get their ids, then added: two requests per 1,000 contacts, never one per row.

    Returns (XCom ``return_value``)::

        {"added": [key, ...],
         "not_processed": {key: {"reason": slug, "detail": text}},
         "stats": {"rows", "added", "not_processed", "duplicates", "unchanged", "requests", ...}}

    :param reply_conn_id: the Reply connection (default ``reply_default``; templated).
    :param contact_id_column: source column of Reply contact ids, when rows carry them.
    :param remove_from_existing: take contacts out of their current sequences first.
    :param start_step_id: the step to start at (default: the first).
    :param ignore_step_delay: skip the delay before the first step.
    :param start_from: when processing begins (an aware datetime or ISO 8601 text; templated).
    :param overwrite_existing: let the import overwrite fields of contacts that exist; by
        default only empty fields are filled.
    :param first_name_fallback: the first name imported for rows without one. Reply requires
        ``firstName`` on every imported contact, so by default a row without one is
        ``missingField`` and ``column_map`` must map a column to ``firstName``.

    The other parameters (source, ``column_map``, ``key_column``, ``batch_size``, ``dry_run``,
    ``incremental``, ...) are those of
    :class:`~airflow_provider_sequences.operators.base.SequenceSyncOperator`. ``column_map``
    targets Reply's contact fields (``email``, ``firstName``, ``lastName``, ``company``,
    ``title``, ``phone``, ``city``, ``state``, ``country``, ``timeZoneId``, ``linkedInUrl``,
    ``notes``) and custom fields as ``customFields.<name>``; with ``contact_id_column`` it may be
    left out. ``key_column`` defaults to
    ``contact_id_column`` when set, else the column mapped to ``email``.
    """

    template_fields: Sequence[str] = (
        *SequenceSyncOperator.template_fields,
        "reply_conn_id",
        "start_from",
        "start_step_id",
    )
    operator_extra_links = (SequenceLink(), SyncReportLink())
    service_name = ReplyAdapter.service
    display_name = ReplyHook.hook_name
    sequence_alias = AssetAlias(name="reply-sequences")
    sequence_asset = staticmethod(reply_sequence_asset)

    def __init__(
        self,
        *,
        reply_conn_id: str = ReplyHook.default_conn_name,
        contact_id_column: str | None = None,
        remove_from_existing: bool = False,
        start_step_id: int | None = None,
        ignore_step_delay: bool = False,
        start_from: datetime | str | None = None,
        overwrite_existing: bool = False,
        first_name_fallback: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("column_map") and not contact_id_column:
            raise ValueError("column_map is required unless rows carry Reply contact ids (contact_id_column)")
        super().__init__(**kwargs)
        self.reply_conn_id = reply_conn_id
        self.contact_id_column = contact_id_column
        self.remove_from_existing = remove_from_existing
        self.start_step_id = start_step_id
        self.ignore_step_delay = ignore_step_delay
        self.start_from = start_from
        self.overwrite_existing = overwrite_existing
        self.first_name_fallback = first_name_fallback

    def connection_id(self) -> str:
        return self.reply_conn_id

    def id_column(self) -> str | None:
        return self.contact_id_column

    def default_key_column(self) -> str:
        if self.contact_id_column:
            return self.contact_id_column
        for column, field in self.column_map.items():
            if field == "email":
                return column
        raise ValueError("set key_column, contact_id_column, or map a column to 'email'")

    def sequence_url(self) -> str:
        return f"{ReplyHook.web_url}/#/sequences/{self.sequence_id}"

    def normalize_sequence_id(self, value: Any) -> int:
        return reply_sequence_id(value)

    def make_adapter(self) -> ReplyAdapter:
        return ReplyAdapter(
            ReplyHook(self.reply_conn_id, **self.hook_kwargs()),
            int(self.sequence_id),
            enrolment=ReplyEnrolment(
                remove_from_existing=bool(self.remove_from_existing),
                start_step_id=int(self.start_step_id) if self.start_step_id else None,
                ignore_step_delay=bool(self.ignore_step_delay),
                start_from=self.start_from or None,
                overwrite_existing=bool(self.overwrite_existing),
                first_name_fallback=self.first_name_fallback or None,
            ),
            with_contact_ids=bool(self.contact_id_column),
        )

    def prepare_spec(self, adapter: HookAdapter) -> PrepareSpec:
        if "firstName" in adapter.rules.required and "firstName" not in self.column_map.values():
            raise ValueError(
                "column_map maps no column to 'firstName': Reply requires a first name on every "
                "imported contact; map one, or set first_name_fallback (e.g. 'there')"
            )
        return super().prepare_spec(adapter)
