"""A run's request counters and its progress lines in the log."""

from __future__ import annotations

import logging
import time

from airflow_provider_sequences.sync.contract import ServiceAdapter
from airflow_provider_sequences.sync.record import Recorder
from airflow_provider_sequences.sync.send import Pusher


class Progress:
    """Counts the run's requests into its result, and logs a line every ``interval`` seconds.

    :param total_rows: the number of source rows when known cheaply.
    """

    def __init__(
        self,
        adapter: ServiceAdapter,
        recorder: Recorder,
        pusher: Pusher,
        log: logging.Logger,
        *,
        interval: float,
        total_rows: int | None,
    ) -> None:
        self.adapter = adapter
        self.recorder = recorder
        self.pusher = pusher
        self.log = log
        self.interval = interval
        self.total_rows = total_rows
        self.started = self.last_log = time.monotonic()
        self.requests_before = adapter.request_counts
        #: Requests made before the run (reading the sequence, its steps, the channels): not
        #: reads or writes of the run, but the service counts them against the budget too.
        self.preflight_requests = 0
        #: Batches sent and recorded so far.
        self.batches = 0

    def batch_settled(self) -> None:
        self.batches += 1
        self.maybe_log()

    def count_requests(self) -> None:
        writes, reads = self.adapter.request_counts
        stats = self.recorder.result.stats
        stats["write_requests"] = writes - self.requests_before[0]
        stats["read_requests"] = reads - self.requests_before[1]
        stats["requests"] = stats["write_requests"] + stats["read_requests"] + self.preflight_requests
        stats["split_batches"] = self.pusher.splits

    def maybe_log(self) -> None:
        """A progress line, when the last one is ``interval`` seconds old."""
        now = time.monotonic()
        if now - self.last_log < self.interval:
            return
        self.last_log = now
        self.count_requests()
        stats = self.recorder.result.stats
        rows = stats["rows"]
        elapsed = max(now - self.started, 1e-9)
        total = f" of {self.total_rows:,}" if self.total_rows else ""
        self.log.info(
            "%s: %s%s rows read (%.0f rows/s); %d batches sent, %d added, %d not processed, "
            "%d unchanged, %d requests",
            self.adapter.display_name,
            f"{rows:,}",
            total,
            rows / elapsed,
            self.batches,
            self.recorder.counts["added"],
            self.recorder.counts["not_processed"],
            stats["unchanged"],
            stats["requests"],
        )
