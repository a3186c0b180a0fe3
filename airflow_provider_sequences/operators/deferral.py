"""The task's steps, for every service: send, confirm what the service accepted (waiting in
the triggerer when ``deferrable`` and the service has a trigger), then report. A service whose
enrolment is confirmed later overrides the hook points at the end."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from airflow.sdk import Context
from airflow.triggers.base import BaseTrigger

from airflow_provider_sequences.sync.contract import ServiceAdapter
from airflow_provider_sequences.sync.engine import SyncRun
from airflow_provider_sequences.sync.outcomes import SyncResult
from airflow_provider_sequences.sync.pace import RunPace


class ConfirmScaffold:
    """Base of :class:`~airflow_provider_sequences.operators.base.SequenceSyncOperator`: what
    it needs here is declared, and defined there (or by Airflow's ``BaseOperator``)."""

    display_name: ClassVar[str]
    log: Any
    defer: Callable[..., Any]
    start_run: Callable[..., SyncRun]
    read_and_push: Callable[[SyncRun], None]
    complete: Callable[[Mapping[str, Any], SyncResult, SyncRun], dict[str, Any]]
    run_pace: Callable[[SyncRun], RunPace]
    earlier_pace: RunPace | None

    #: Whether to wait for the service's background work in the triggerer: only operators
    #: that have a trigger (:meth:`confirm_trigger`) set it, from ``default_deferrable``.
    deferrable: bool = False

    def execute(self, context: Context) -> dict[str, Any]:
        run = self.start_run(context, **self.run_options(None))
        try:
            return self.sync(context, run)
        finally:
            run.release()

    def sync(self, context: Context, run: SyncRun) -> dict[str, Any]:
        """Send every batch, then read back what the service accepted without confirming."""
        self.before_sending(run)
        self.read_and_push(run)
        if not run.options.dry_run and self.should_confirm(run):
            trigger = self.confirm_trigger(run) if self.deferrable else None
            if trigger is not None:
                self.defer_confirm(run, trigger)
            run.confirm()
        return self.complete(context, run.finish(), run)

    def defer_confirm(self, run: SyncRun, trigger: BaseTrigger) -> None:
        """Save the run so far and wait in the triggerer; :meth:`execute_complete` resumes."""
        assert run.state is not None
        run.state.save_run(run.run_id, dict(run.finish().stats), pace=self.run_pace(run))
        if run.lease is not None:
            # The resumed task takes the lease over: no other run may carry this run's pending
            # keys meanwhile.
            run.lease.keep_while_deferred(self.defer_timeout() + 300)
        self.log.info("Deferring: waiting for %s to enrol %d contacts", self.display_name, run.pending_count)
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: read back the run's pending keys and finish its result."""
        run = self.start_run(context, **self.run_options(event or {}))
        try:
            return self._resume(context, event, run)
        finally:
            run.release()

    def _resume(self, context: Context, event: dict[str, Any] | None, run: SyncRun) -> dict[str, Any]:
        assert run.state is not None
        if run.lease is not None:
            run.lease.acquire()  # the deferred task's lease, or the scope once it expired
        self.resume_adapter(run.adapter, event or {})
        saved = run.state.load_run(run.run_id) or {}
        self.earlier_pace = run.state.load_pace(run.run_id)
        self.log.info("%s's background work is %s", self.display_name, (event or {}).get("status", "over"))
        run.confirm()  # the run's pending keys, read from the state
        result = run.finish()
        for name, value in saved.items():
            if name in ("write_requests", "read_requests", "requests"):
                result.stats[name] += int(value)
            elif name not in ("added", "not_processed", "finished"):
                result.stats[name] = value
        return self.complete(context, result, run)

    # What a service whose enrolment is confirmed later changes (by default: confirm at once).

    def run_options(self, event: dict[str, Any] | None) -> dict[str, Any]:
        """Extra :class:`SyncOptions` of a run (``event``: the trigger's, when resuming)."""
        return {}

    def before_sending(self, run: SyncRun) -> None:
        """What the service needs read before the first batch."""

    def should_confirm(self, run: SyncRun) -> bool:
        """Whether to read back after sending (batches whose answer was lost, pending keys)."""
        return True

    def confirm_trigger(self, run: SyncRun) -> BaseTrigger | None:
        """The trigger that waits for the service's background work; ``None``: wait here."""
        return None

    def defer_timeout(self) -> float:
        """Seconds the trigger may wait."""
        return 0.0

    def resume_adapter(self, adapter: ServiceAdapter, event: dict[str, Any]) -> None:
        """Hand the adapter what the trigger learnt."""
