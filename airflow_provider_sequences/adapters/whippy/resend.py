"""Writes whose answer was lost, and when one may be sent again: never blindly, since Whippy
messages again a contact sent again to its step."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from airflow_provider_sequences.adapters.whippy.readback import Waiting
from airflow_provider_sequences.adapters.whippy.steps import StepWatch
from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.whippy import WhippyHook


class LostWrites:
    """The Whippy adapter's writes whose answer was lost, and their one re-send (a mixin of
    :class:`~airflow_provider_sequences.adapters.whippy.adapter.WhippyAdapter`)."""

    hook: WhippyHook
    max_batch_size: ClassVar[int]
    #: Keys whose write's answer was lost (maybe applied, maybe not) and not sent again since.
    _uncertain: set[str]
    #: Their ``to`` items (this process only), for one re-send once the step proves them absent.
    _lost: dict[str, dict[str, Any]]
    _lost_at: float | None  # time.monotonic() of the last write whose answer was lost
    _accepted_at: float | None  # ... and of the last write Whippy answered

    def _create(self, items: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _resend_due(self, waiting: Waiting, watch: StepWatch) -> bool:
        """Whether Whippy is done with what it accepted, so that a lost batch still absent was
        never applied and may be sent again.

        The answer to a write can be lost before Whippy saw it (a reset: nothing happened) or
        after (the 202 was lost: the contacts arrive later). Sending the second kind again
        would message its contacts twice, so a batch is sent again only when all of these hold:

        - its contacts are still waiting and it was not sent again already (once per run);
        - Whippy applied some of this run's writes (a step that shows none of them may mean its
          queue has not started: the caller checks) and the step's count stood still for a poll;
        - every contact of a write Whippy answered is in the step, or the step is settled
          (:class:`StepWatch`: some were ignored and will never arrive);
        - since the lost write, twice the time Whippy took to show the last answered write
          has passed (from that write to the poll where the count last moved);
        - then a full read, with the count unchanged, does not find them (the caller).

        What remains is Whippy applying one request far later than the ones around it; the
        task's retry, which re-sends ``notEnrolled`` keys, carries the same risk later.
        """
        if not self._lost or watch.unchanged < 1 or self._accepted_at is None or self._lost_at is None:
            return False
        if not any(waiting.waits_for_each(list(self._lost))):
            return False
        # Some key still waiting is not one whose write was lost.
        certain_missing = len(waiting) > sum(waiting.waits_for_each(list(self._uncertain)))
        if certain_missing and not watch.settled:
            return False
        lag = max(watch.moved_at - self._accepted_at, 0.0)
        return time.monotonic() - self._lost_at >= 2 * lag

    def _resend(self, waiting: Waiting) -> bool:
        """Send the lost batches' contacts still waiting once more (up to 4,000 a call).
        Returns whether any call was answered."""
        lost = list(self._lost)
        keys = [key for key, waits in zip(lost, waiting.waits_for_each(lost), strict=True) if waits]
        items = {key: self._lost.pop(key) for key in keys}
        self._lost.clear()  # once per run: what is not sent now is left to the task's retry
        answered = False
        for first in range(0, len(keys), self.max_batch_size):
            chunk = keys[first : first + self.max_batch_size]
            self.hook.log.info(
                "Whippy never showed %d contacts whose write's answer was lost, and its work is "
                "over: sending them again, once",
                len(chunk),
            )
            try:
                self._create([items[key] for key in chunk])
            except SequencesApiError as exc:
                # Lost again, or refused: the keys stay uncertain and end notEnrolled; the task's
                # retry handles them as it did before (read back, send what is absent).
                self.hook.log.warning("Sending %d lost contacts again failed: %s", len(chunk), exc)
                continue
            answered = True
            self._accepted_at = time.monotonic()
            self._uncertain.difference_update(chunk)
        return answered
