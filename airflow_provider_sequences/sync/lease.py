"""One sync of a scope (service, account, sequence) at a time: a lease in the sync state.

A run takes a lease row on its scope before it plans or sends anything, renews it from a
heartbeat thread, and ends it when it finishes. A killed worker stops renewing, so its lease
expires after ``ttl`` seconds and the scope is free again. A run of another lease group waits
up to ``lock_timeout`` seconds, then fails before sending anything, naming the holder.

Runs of one lease group (the mapped shards of one task in one DAG run) share the scope: they
run in parallel, and each batch is marked in flight key by key in the state before it is sent
(:meth:`SyncState.mark_in_flight`), so a key two shards both read is sent by one of them. Their
requests draw from the account's one rate budget, so together they go as fast as the
service allows, not faster.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from types import TracebackType

from airflow_provider_sequences.exceptions import ScopeBusyError
from airflow_provider_sequences.sync.state import DEFERRED_HOLDER, SyncState

log = logging.getLogger(__name__)

#: Seconds a lease lasts without a heartbeat: how long a killed worker blocks its scope.
DEFAULT_LEASE_TTL = 60.0
#: Seconds a run waits for the scope by default.
DEFAULT_LOCK_TIMEOUT = 1800.0


def this_process() -> str:
    """Host and process id: who holds a lease, as the message of a waiting run names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ScopeLease:
    """A run's lease on its scope, renewed in the background while held.

    :param state: the sync state of the scope.
    :param run_id: the run (or shard) holding it; a retry of the same run takes it over once
        the earlier attempt's lease expired.
    :param group: runs of one group share the scope (the shards of one mapped task).
    :param lock_timeout: seconds to wait for a scope another group holds.
    :param ttl: seconds a lease lasts without renewal.
    :param poll_interval: seconds between attempts while waiting.
    """

    def __init__(
        self,
        state: SyncState,
        run_id: str,
        *,
        group: str | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        ttl: float = DEFAULT_LEASE_TTL,
        poll_interval: float = 1.0,
    ) -> None:
        if ttl <= 0:
            raise ValueError("a lease's ttl must be positive")
        self.state = state
        self.run_id = run_id
        self.group = group or run_id
        self.lock_timeout = max(float(lock_timeout), 0.0)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.holder = this_process()
        #: When the lease was taken (UTC); keys other runs record after it are theirs.
        self.acquired_at: datetime | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.acquired_at is not None and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        """Whether the lease expired under this run (its heartbeat could not renew it)."""
        return self._lost.is_set()

    def acquire(self) -> None:
        """Take the lease, waiting up to ``lock_timeout``; start the heartbeat.

        :raises ScopeBusyError: another run still holds the scope after ``lock_timeout``.
        """
        scope = self.state.scope
        deadline = time.monotonic() + self.lock_timeout
        waited = False
        while True:
            taken_at = datetime.now(timezone.utc)
            other = self.state.take_lease(self.run_id, self.group, self.holder, self.ttl)
            if other is None:
                break
            if time.monotonic() >= deadline:
                raise ScopeBusyError(
                    f"{scope.service} sequence {scope.sequence_id} of account {scope.account} is being "
                    f"synced by run {other.run_id!r} ({other.holder}, lease until "
                    f"{other.expires_at:%Y-%m-%d %H:%M:%S} UTC); waited {self.lock_timeout:.0f} s "
                    "(lock_timeout) and sent nothing",
                    holder=other.run_id,
                )
            if not waited:
                log.info(
                    "Waiting up to %.0f s for run %r to finish syncing %s sequence %s",
                    self.lock_timeout,
                    other.run_id,
                    scope.service,
                    scope.sequence_id,
                )
                waited = True
            time.sleep(max(min(self.poll_interval, deadline - time.monotonic()), 0.01))
        self.acquired_at = taken_at
        self._lost.clear()
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"sequences-lease-{self.run_id}", daemon=True
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                renewed = self.state.renew_lease(self.run_id, self.holder, self.ttl)
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("Could not renew the sync lease; retrying", exc_info=True)
                continue
            if not renewed:
                log.error("The sync lease of run %r expired: this run stops sending", self.run_id)
                self._lost.set()
                return

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=self.ttl)
            self._heartbeat = None

    def keep_while_deferred(self, seconds: float) -> None:
        """Hold the lease ``seconds`` more without a heartbeat (the task defers to the
        triggerer); the task that resumes the run takes it over."""
        self._stop_heartbeat()
        self.state.renew_lease(self.run_id, DEFERRED_HOLDER, seconds)
        self.acquired_at = None

    def release(self) -> None:
        """End the lease (idempotent)."""
        self._stop_heartbeat()
        if self.acquired_at is not None:
            self.acquired_at = None
            try:
                self.state.release_lease(self.run_id)
            except Exception:  # it expires by itself
                log.warning("Could not release the sync lease; it expires in %.0f s", self.ttl, exc_info=True)

    def __enter__(self) -> ScopeLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
