"""Wait for Whippy's background enrolment without holding a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_sequences.adapters.whippy.steps import StepWatch
from airflow_provider_sequences.hooks.whippy import WhippyHook


class WhippyEnrollmentTrigger(BaseTrigger):
    """Polls how many contacts a sequence step holds until Whippy's background work is done.

    Only reads (one cheap request per poll, never a write). Fires when the step holds
    ``expected_total`` contacts, when its count has not moved for ``stable_polls`` polls in a
    row after it first moved from ``initial_total`` (contacts Whippy ignored never arrive; a
    count that never moved means Whippy has not started, not that it is done), or after
    ``timeout`` seconds; the task then resumes and reads the step back to learn exactly who was
    enrolled. The event says how long the wait was (``waited``, seconds), and passes
    ``tail_from`` on to the task.

    :param whippy_conn_id: the Whippy connection.
    :param sequence_id: the sequence.
    :param step_id: the step the contacts were sent to.
    :param expected_total: the step's count once every accepted contact is in.
    :param initial_total: the step's count before the contacts were sent (default: the first
        poll's count).
    :param poll_interval: seconds between polls.
    :param stable_polls: unchanged polls in a row that mean the work is over.
    :param timeout: seconds before giving up.
    :param tail_from: where in the step the task's contacts start, when it sent every contact it
        waits for after reading that count: the resumed task reads the step from there, not
        all of it. ``None``: they may be anywhere.
    :param not_before: a time (seconds since the epoch) before which no event fires, however
        soon Whippy is done. Airflow 3.2 and 3.3 fail a deferred task whose resumed attempt is
        already running when the scheduler hears that the deferring worker exited
        (apache/airflow#71580, #72716); a trigger that fires at once makes that likely.
    """

    def __init__(
        self,
        *,
        whippy_conn_id: str,
        sequence_id: str,
        step_id: str,
        expected_total: int,
        poll_interval: float = 10.0,
        stable_polls: int = 3,
        timeout: float = 600.0,
        initial_total: int | None = None,
        tail_from: int | None = None,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.whippy_conn_id = whippy_conn_id
        self.sequence_id = sequence_id
        self.step_id = step_id
        self.expected_total = expected_total
        self.poll_interval = poll_interval
        self.stable_polls = stable_polls
        self.timeout = timeout
        self.initial_total = initial_total
        self.tail_from = tail_from
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "whippy_conn_id": self.whippy_conn_id,
                "sequence_id": self.sequence_id,
                "step_id": self.step_id,
                "expected_total": self.expected_total,
                "poll_interval": self.poll_interval,
                "stable_polls": self.stable_polls,
                "timeout": self.timeout,
                "initial_total": self.initial_total,
                "tail_from": self.tail_from,
                "not_before": self.not_before,
            },
        )

    def _count(self, hook: WhippyHook) -> int:
        return hook.count_sequence_contacts(self.sequence_id, step_ids=[self.step_id])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = WhippyHook(self.whippy_conn_id)
        started = time.monotonic()
        deadline = started + self.timeout
        # The adapter's rule for when Whippy's work is over, from the count before the write.
        watch = StepWatch(self.stable_polls, initial=self.initial_total)
        while True:
            # The hook is synchronous (requests); a thread keeps the triggerer's loop free.
            total = await asyncio.to_thread(self._count, hook)
            if watch.initial is None:
                watch.initial = total
            watch.observe(total, time.monotonic())
            status = None
            if total >= self.expected_total:
                status = "complete"
            elif watch.settled:
                status = "settled"
            elif time.monotonic() >= deadline:
                status = "timeout"
            if status:
                self.log.info("Whippy step %s holds %d contacts: %s", self.step_id, total, status)
                if self.not_before is not None and (early := self.not_before - time.time()) > 0:
                    await asyncio.sleep(early)
                waited = round(time.monotonic() - started, 1)
                yield TriggerEvent(
                    {"status": status, "total": total, "waited": waited, "tail_from": self.tail_from}
                )
                return
            self.log.info("Whippy step %s holds %d of %d contacts", self.step_id, total, self.expected_total)
            await asyncio.sleep(self.poll_interval)
