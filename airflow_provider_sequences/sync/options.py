"""How a run behaves: the options of :class:`~airflow_provider_sequences.sync.engine.SyncRun`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyncOptions:
    """How a run behaves.

    :param batch_size: contacts per request (at most the service's maximum).
    :param dry_run: plan only: no write request and nothing written to the state.
    :param incremental: skip keys an earlier run enrolled; retry earlier failures that may
        succeed now (up to ``max_attempts`` sends), and data rejections only when the data changed.
    :param full_resync: send every key whatever the state says (outcomes are still recorded).
    :param max_attempts: sends of one key across runs before a transient failure is final.
    :param enrollment_timeout: seconds to wait for a service that confirms in the background.
    :param max_failed_batches: consecutive failed batches before the run stops sending.
    :param progress_interval: seconds between progress lines in the log.
    :param mask_values: mask emails and phones in the details of not-processed keys, in the
        result and in the state (see :mod:`~airflow_provider_sequences.sync.masking`).
    """

    batch_size: int
    dry_run: bool = False
    incremental: bool = True
    full_resync: bool = False
    max_attempts: int = 5
    enrollment_timeout: float = 600.0
    max_failed_batches: int = 3
    progress_interval: float = 30.0
    mask_values: bool = False
