"""Operator that enrols contacts from an upstream table into a Whippy sequence."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetAlias, Context

from airflow_provider_sequences.adapters.whippy import WhippyAdapter, WhippyEnrolment
from airflow_provider_sequences.hooks.base import path_segment
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.links import SequenceLink, SyncReportLink
from airflow_provider_sequences.operators.base import SequenceSyncOperator
from airflow_provider_sequences.sync.engine import SyncRun
from airflow_provider_sequences.sync.outcomes import SyncResult
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

    :param whippy_conn_id: the Whippy connection (default ``whippy_default``).
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
    :param deferrable: wait in the triggerer instead of a worker slot.

    ``column_map`` targets ``phone`` (required, made E.164 with ``default_region``), ``email``,
    ``name``, ``external_id``, ``language``, ``default_channel_id``, ``address.<part>``
    (``address_line_one``, ``address_line_two``, ``city``, ``state``, ``country``,
    ``post_code``), ``birth_date.<day|month|year>`` and ``properties.<key>``. ``key_column``
    defaults to the column mapped to ``external_id``, else the one mapped to ``phone``.
    """

    template_fields: Sequence[str] = (
        *SequenceSyncOperator.template_fields,
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
        deferrable: bool = False,
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
        self.deferrable = deferrable

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

    def execute(self, context: Context) -> dict[str, Any]:
        run = self.start_run(context, enrollment_timeout=self.enrollment_timeout)
        try:
            return self._sync(context, run)
        finally:
            run.release()

    def _sync(self, context: Context, run: SyncRun) -> dict[str, Any]:
        adapter = run.adapter
        assert isinstance(adapter, WhippyAdapter)
        if not run.options.dry_run:
            assert run.state is not None
            # Whippy messages a contact sent again to its step: who is in already is read first.
            adapter.read_members_unless_known(run.state)
        baseline = 0 if run.options.dry_run else adapter.step_total()
        self.read_and_push(run)
        if run.pending_count and self.wait_for_enrollment and not run.options.dry_run:
            if self.deferrable:
                assert run.state is not None
                run.state.save_run(run.run_id, dict(run.finish().stats), pace=self.run_pace(run))
                if run.lease is not None:
                    # The resumed task takes the lease over: no other run may carry this run's
                    # pending keys meanwhile.
                    run.lease.keep_while_deferred(self.enrollment_timeout + 300)
                self.log.info("Deferring: waiting for Whippy to enrol %d contacts", run.pending_count)
                self.defer(
                    trigger=WhippyEnrollmentTrigger(
                        whippy_conn_id=self.whippy_conn_id,
                        sequence_id=str(self.sequence_id),
                        step_id=str(adapter.step_id),
                        expected_total=baseline + run.pending_count,
                        initial_total=baseline,
                        # Every contact waiting was sent by this task after the count was read
                        # (none carried from an earlier run): the resume reads the step from there.
                        tail_from=None if run.pending else baseline,
                        poll_interval=self.poll_interval,
                        timeout=self.enrollment_timeout,
                    ),
                    method_name="execute_complete",
                )
            run.confirm()
        return self._finished(context, run.finish(), run)

    def _finished(self, context: Context, result: SyncResult, run: SyncRun) -> dict[str, Any]:
        """Save the run as finished (later runs need not read the sequence's members first),
        then report it."""
        if run.state is not None and not run.options.dry_run:
            run.state.save_run(run.run_id, dict(result.stats), finished=True)
        return self.complete(context, result, run)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: read the step back and finish the run's result."""
        # The trigger may fire before this task's contacts are in: mapped shards of one sequence
        # share the step, so a sibling's contacts count too. Read back for what is left of
        # enrollment_timeout; a contact wrongly called notEnrolled would be sent (messaged) again.
        waited = float((event or {}).get("waited") or 0.0)
        remaining = max(float(self.enrollment_timeout) - waited, float(self.poll_interval))
        run = self.start_run(context, enrollment_timeout=remaining)
        try:
            return self._resume(context, event, run)
        finally:
            run.release()

    def _resume(self, context: Context, event: dict[str, Any] | None, run: SyncRun) -> dict[str, Any]:
        assert run.state is not None
        assert isinstance(run.adapter, WhippyAdapter)
        if run.lease is not None:
            run.lease.acquire()  # the deferred task's lease, or the scope once it expired
        if event and event.get("waited") is not None:
            run.adapter.waited = float(event["waited"])
        if event and event.get("tail_from") is not None:
            run.adapter.resume_after(int(event["tail_from"]))
        saved = run.state.load_run(run.run_id) or {}
        self.earlier_pace = run.state.load_pace(run.run_id)
        self.log.info("Whippy's background work is %s", (event or {}).get("status", "over"))
        run.confirm()  # the run's pending keys, read from the state
        result = run.finish()
        for name, value in saved.items():
            if name in ("write_requests", "read_requests", "requests"):
                result.stats[name] += int(value)
            elif name not in ("added", "not_processed", "finished"):
                result.stats[name] = value
        return self._finished(context, result, run)
