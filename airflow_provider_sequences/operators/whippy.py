"""Operator that enrols contacts from an upstream table into a Whippy sequence."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetAlias

from airflow_provider_sequences.adapters.whippy import WhippyAdapter, WhippyEnrolment
from airflow_provider_sequences.hooks.base import path_segment
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.links import SequenceLink, SyncReportLink
from airflow_provider_sequences.operators.base import SequenceSyncOperator
from airflow_provider_sequences.operators.conventions import default_deferrable
from airflow_provider_sequences.sync.contract import ServiceAdapter
from airflow_provider_sequences.sync.engine import SyncRun
from airflow_provider_sequences.triggers.whippy import WhippyEnrollmentTrigger


def whippy_sequence_asset(sequence_id: Any) -> Asset:
    """The Asset a sync into this Whippy sequence updates, for data-aware scheduling."""
    return Asset(uri=f"whippy://sequences/{sequence_id}", name=f"whippy-sequence-{sequence_id}")


class WhippyAddContactsToSequenceOperator(SequenceSyncOperator):
    """Enrol contacts from a table into a Whippy sequence, 4,000 per request.

    Whippy answers 202 and enrols in the background, silently ignoring contacts that lack
    what the step's channel needs or that are active in another step. So after sending, the
    operator reads the step back until every accepted contact is seen or
    ``enrollment_timeout`` passes; contacts never seen become ``notEnrolled``. With
    ``deferrable=True`` that wait happens in a trigger that only reads and holds no worker slot.

    Returns the same shape as the Reply operator (``added``, ``not_processed``, ``stats``).

    :param whippy_conn_id: the Whippy connection (default ``whippy_default``; templated).
    :param from_channel: phone or email of the channel to send from (the API's ``from``).
    :param step_id: the step to add contacts to (default: the first).
    :param schedule_at: when the contacts start (aware datetime or ISO 8601 text; templated).
    :param custom_object_id: a custom object to attach ``properties.<key>`` columns to.
    :param custom_data_resource: ``contact`` or ``step_contact``.
    :param voice_options: default call flow for inbound calls, passed through as given.
    :param wait_for_enrollment: read the enrolment back before finishing (default true);
        without it, accepted contacts are reported ``enrollmentUnconfirmed`` and the next run
        confirms them.
    :param enrollment_timeout: seconds to wait for Whippy's background work.
    :param poll_interval: seconds between read-backs while waiting.
    :param deferrable: wait in the triggerer instead of a worker slot (default: Airflow's
        ``[operators] default_deferrable``, false unless set).
    :param min_deferral: least seconds a deferred task waits before it resumes (default 20),
        however soon Whippy is done: Airflow 3.2 and 3.3 fail a deferred task that resumes
        before the scheduler has heard its worker exit (apache/airflow#71580).

    ``column_map`` targets ``phone`` (required, made E.164 with ``default_region``), ``email``,
    ``name``, ``external_id``, ``language``, ``default_channel_id``, ``address.<part>``
    (``address_line_one``, ``address_line_two``, ``city``, ``state``, ``country``,
    ``post_code``), ``birth_date.<day|month|year>`` and ``properties.<key>``. ``key_column``
    defaults to the column mapped to ``external_id``, else the one mapped to ``phone``.
    """

    template_fields: Sequence[str] = (
        *SequenceSyncOperator.template_fields,
        "whippy_conn_id",
        "from_channel",
        "step_id",
        "schedule_at",
        "custom_object_id",
    )
    operator_extra_links = (SequenceLink(), SyncReportLink())
    service_name = WhippyAdapter.service
    display_name = WhippyHook.hook_name
    sequence_alias = AssetAlias(name="whippy-sequences")
    sequence_asset = staticmethod(whippy_sequence_asset)

    def __init__(
        self,
        *,
        whippy_conn_id: str = WhippyHook.default_conn_name,
        from_channel: str | None = None,
        step_id: str | None = None,
        schedule_at: datetime | str | None = None,
        custom_object_id: str | None = None,
        custom_data_resource: str = "contact",
        voice_options: dict[str, Any] | None = None,
        wait_for_enrollment: bool = True,
        enrollment_timeout: float = 600.0,
        poll_interval: float = 10.0,
        deferrable: bool | None = None,
        min_deferral: float = 20.0,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("column_map"):
            raise ValueError("column_map is required: map a column to 'phone'")
        super().__init__(**kwargs)
        self.whippy_conn_id = whippy_conn_id
        self.from_channel = from_channel
        self.step_id = step_id
        self.schedule_at = schedule_at
        self.custom_object_id = custom_object_id
        self.custom_data_resource = custom_data_resource
        self.voice_options = voice_options
        self.wait_for_enrollment = wait_for_enrollment
        self.enrollment_timeout = enrollment_timeout
        self.poll_interval = poll_interval
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.min_deferral = min_deferral
        self._baseline = 0

    def connection_id(self) -> str:
        return self.whippy_conn_id

    def default_key_column(self) -> str:
        for wanted in ("external_id", "phone"):
            for column, field in self.column_map.items():
                if field == wanted:
                    return column
        raise ValueError("set key_column, or map a column to 'external_id' or 'phone'")

    def sequence_url(self) -> str:
        return f"{WhippyHook.web_url}/sequences/{self.sequence_id}"

    def normalize_sequence_id(self, value: Any) -> str:
        text = super().normalize_sequence_id(value)
        path_segment(text, "the Whippy sequence_id")  # refuses ids that would reach another path
        return str(text)

    def make_adapter(self) -> WhippyAdapter:
        return WhippyAdapter(
            WhippyHook(self.whippy_conn_id, **self.hook_kwargs()),
            str(self.sequence_id),
            enrolment=WhippyEnrolment(
                from_channel=self.from_channel or None,
                step_id=self.step_id or None,
                schedule_at=self.schedule_at or None,
                custom_object_id=self.custom_object_id or None,
                custom_data_resource=self.custom_data_resource,
                voice_options=self.voice_options,
            ),
            poll_interval=self.poll_interval,
        )

    # -- confirming: Whippy enrols in the background ------------------------------------------

    def run_options(self, event: dict[str, Any] | None) -> dict[str, Any]:
        if event is None:
            return {"enrollment_timeout": self.enrollment_timeout}
        # The trigger may fire before this task's contacts are in: mapped shards of one sequence
        # share the step, so a sibling's contacts count too. Read back for what is left of
        # enrollment_timeout; a contact wrongly called notEnrolled would be sent (messaged) again.
        waited = float(event.get("waited") or 0.0)
        return {"enrollment_timeout": max(float(self.enrollment_timeout) - waited, float(self.poll_interval))}

    def before_sending(self, run: SyncRun) -> None:
        adapter = run.adapter
        assert isinstance(adapter, WhippyAdapter)
        if not run.options.dry_run:
            assert run.state is not None
            # Whippy messages a contact sent again to its step: who is in already is read first.
            adapter.read_members_unless_known(run.state)
        self._baseline = 0 if run.options.dry_run else adapter.step_total()

    def should_confirm(self, run: SyncRun) -> bool:
        return bool(run.pending_count) and bool(self.wait_for_enrollment)

    def confirm_trigger(self, run: SyncRun) -> WhippyEnrollmentTrigger:
        assert isinstance(run.adapter, WhippyAdapter)
        return WhippyEnrollmentTrigger(
            whippy_conn_id=self.whippy_conn_id,
            sequence_id=str(self.sequence_id),
            step_id=str(run.adapter.step_id),
            expected_total=self._baseline + run.pending_count,
            initial_total=self._baseline,
            # Every contact waiting was sent by this task after the count was read (none carried
            # from an earlier run): the resume reads the step from there.
            tail_from=None if run.pending else self._baseline,
            poll_interval=self.poll_interval,
            timeout=self.enrollment_timeout,
            not_before=time.time() + self.min_deferral,
        )

    def defer_timeout(self) -> float:
        return float(self.enrollment_timeout)

    def resume_adapter(self, adapter: ServiceAdapter, event: dict[str, Any]) -> None:
        assert isinstance(adapter, WhippyAdapter)
        if event.get("waited") is not None:
            adapter.waited = float(event["waited"])
        if event.get("tail_from") is not None:
            adapter.resume_after(int(event["tail_from"]))
