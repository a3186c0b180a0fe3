"""What the Reply.io and Whippy operators share: the source, the state, the run, the result."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

import pandas as pd
from airflow.sdk import Asset, AssetAlias, BaseHook, BaseOperator

from airflow_provider_sequences.adapters.base import HookAdapter
from airflow_provider_sequences.exceptions import (
    SyncAbortedError,
    SyncConfigurationError,
    SyncFailedError,
)
from airflow_provider_sequences.operators.conventions import (
    AirflowFailException,
    configuration_failed,
    flag,
)
from airflow_provider_sequences.operators.deferral import ConfirmScaffold
from airflow_provider_sequences.operators.report import failed_keys, lineage_facets, log_result
from airflow_provider_sequences.operators.source import source_chunks
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.lease import DEFAULT_LOCK_TIMEOUT, ScopeLease
from airflow_provider_sequences.sync.outcomes import (
    SyncResult,
)
from airflow_provider_sequences.sync.pace import RunPace
from airflow_provider_sequences.sync.prepare import PrepareSpec, validate_column_map
from airflow_provider_sequences.sync.state import Scope, SyncState
from airflow_provider_sequences.sync_state import state_engine
from airflow_provider_sequences.ui.queries import REASONS_STAT

DEFAULT_CHUNK_SIZE = 20_000
DEFAULT_MAX_XCOM_KEYS = 1_000_000


class SequenceSyncOperator(ConfirmScaffold, BaseOperator):
    """Base of the operators that enrol contacts read from a table into a sequence.

    Exactly one source: ``sql`` (with ``source_conn_id``), ``source_path`` (CSV, Parquet or
    JSON Lines; local or any object store ``ObjectStoragePath`` reaches, with
    ``source_conn_id`` for its credentials) or ``contacts`` (rows from an upstream task).

    :param sequence_id: the sequence to enrol into. A literal id declares the sequence's Asset
        as an outlet; a templated or mapped id declares the service's AssetAlias, and the run
        emits the Asset of the id it resolved.
    :param column_map: source column -> contact field (dotted for nested and custom fields);
        Reply rows that carry only contact ids (``contact_id_column``) need none.
    :param key_column: the source column that names a row in results and in the sync state.
    :param sql: a query returning one row per contact.
    :param source_conn_id: the database connection for ``sql``, or the object-store
        connection for ``source_path``.
    :param source_path: a file to read; ``file_format`` when its suffix does not say.
    :param contacts: a list of dicts or a DataFrame, typically an upstream task's XCom.
    :param batch_size: contacts per request (default: the service's maximum).
    :param chunk_size: source rows read at once; memory stays flat whatever the export's size.
    :param dry_run: send nothing and write no state: the result says what would be sent.
    :param max_not_processed_share: fail the task when more than this share of the distinct
        keys read is not processed (the result is still in XCom); ``None`` never fails.
        The default, 0.5, tolerates the few bad rows of a nightly export but not a run where
        most rows fail.
    :param max_xcom_keys: ``added`` or ``not_processed`` with more keys than this stays out
        of XCom (its count stays in ``stats``, ``omitted`` names it, and ``keys_in_state`` says
        where to read it: every key's outcome is in the sync state). Default 1,000,000:
        ten million keys would put some 150 MB into XCom every night. ``None``: no limit.
    :param incremental: skip keys an earlier run enrolled and retry what may succeed now.
    :param full_resync: send every key again, whatever the state says.
    :param max_attempts: sends of one key across runs before a transient failure is final.
    :param state_conn_id: a database connection (SQLite or PostgreSQL) for the sync state;
        by default a SQLite file under ``AIRFLOW_HOME``.
    :param default_region: ISO 3166 region for phone numbers written without a country code.
    :param lock_timeout: seconds (or a timedelta) to wait while another run syncs the same
        sequence of the same account; then the task fails, naming that run, having sent
        nothing. The mapped shards of one task in one DAG run share the sequence instead.
    :param rate_limit_conn_id: where the account's rate budget lives, shared by every task
        using the account: a ``postgres`` or ``redis`` connection (across machines) or a
        ``sqlite`` one. By default the service connection's ``rate_limit_conn_id`` extra, else
        ``state_conn_id`` when it is PostgreSQL, else a file under ``AIRFLOW_HOME`` shared by
        the processes of one machine.
    :param mask_values: keep people's values out of the details of not-processed keys (in
        XCom and in the sync state): ``'a•••@example.com' in column 'email'`` instead of the
        address. Off by default, since those values are what the person fixing the CRM acts
        on; keys are not masked (key by a CRM id to keep emails out of results altogether).
    :param reveal_values: show people's values (keys and details) unmasked in the Sequence
        syncs view for this task's runs, to users who may read the DAG. Off by default: the view
        masks them as the logs do. Has no effect with ``mask_values``.
    """

    template_fields: Sequence[str] = (
        "sequence_id",
        "source_conn_id",
        "state_conn_id",
        "rate_limit_conn_id",
        "sql",
        "source_path",
        "contacts",
        "column_map",
        "key_column",
        "dry_run",
        "full_resync",
        "mask_values",
        "reveal_values",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"sql": "sql", "column_map": "json"}
    ui_color = "#e8f4ff"

    #: The service's slug (``reply``, ``whippy``), as the state and the links name it.
    service_name: ClassVar[str]
    #: The service's display name (its hook's ``hook_name``), in messages.
    display_name: ClassVar[str]
    #: The AssetAlias a templated or mapped sequence id emits its sequence's Asset through.
    sequence_alias: ClassVar[AssetAlias]

    def __init__(
        self,
        *,
        sequence_id: Any,
        column_map: Mapping[str, str] | None = None,
        key_column: str | None = None,
        sql: str | None = None,
        source_conn_id: str | None = None,
        source_path: str | None = None,
        file_format: str | None = None,
        contacts: Any = None,
        batch_size: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dry_run: bool = False,
        max_not_processed_share: float | None = 0.5,
        max_xcom_keys: int | None = DEFAULT_MAX_XCOM_KEYS,
        incremental: bool = True,
        full_resync: bool = False,
        max_attempts: int = 5,
        state_conn_id: str | None = None,
        default_region: str | None = None,
        mask_values: bool = False,
        reveal_values: bool = False,
        lock_timeout: float | timedelta = DEFAULT_LOCK_TIMEOUT,
        rate_limit_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "outlets" not in kwargs:
            # Known at parse time: the scheduler sees the Asset itself. Otherwise the run names it.
            templated = sequence_id is None or "{{" in str(sequence_id)
            kwargs["outlets"] = [self.sequence_alias if templated else self.sequence_asset(sequence_id)]
        super().__init__(**kwargs)
        given = [name for name, value in (("sql", sql), ("source_path", source_path)) if value is not None]
        if contacts is not None:
            given.append("contacts")
        if len(given) != 1:
            raise ValueError(
                f"{type(self).__name__} needs exactly one source: sql, source_path or contacts "
                f"(got {', '.join(given) or 'none'})"
            )
        if sql is not None and not source_conn_id:
            raise ValueError("sql needs source_conn_id: the Airflow connection of the database to query")
        self.sequence_id = sequence_id
        self.column_map = dict(column_map or {})
        self.key_column = key_column
        self.sql = sql
        self.source_conn_id = source_conn_id
        self.source_path = source_path
        self.file_format = file_format
        self.contacts = contacts
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.dry_run = dry_run
        self.max_not_processed_share = max_not_processed_share
        self.max_xcom_keys = max_xcom_keys
        self.incremental = incremental
        self.full_resync = full_resync
        self.max_attempts = max_attempts
        self.state_conn_id = state_conn_id
        self.default_region = default_region
        self.lock_timeout = (
            lock_timeout.total_seconds() if isinstance(lock_timeout, timedelta) else float(lock_timeout)
        )
        self.rate_limit_conn_id = rate_limit_conn_id
        self.mask_values = mask_values
        self.reveal_values = reveal_values
        #: Requests sent before this task's run and when it began (see :meth:`run_pace`).
        self._requests_before: dict[str, int] = {}
        self._began = time.monotonic()
        #: A deferred task's first part's pace, added to the resumed part's.
        self.earlier_pace: RunPace | None = None

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """Mapped tasks resolve their sequence ids at run time: they emit through the alias."""
        kwargs.setdefault("outlets", [cls.sequence_alias])
        return super().partial(**kwargs)

    # -- what each service provides -----------------------------------------------------------

    @staticmethod
    def sequence_asset(sequence_id: Any) -> Asset:
        """The Asset a sync into this sequence updates, for data-aware scheduling."""
        raise NotImplementedError

    def make_adapter(self) -> HookAdapter:
        raise NotImplementedError

    def connection_id(self) -> str:
        raise NotImplementedError

    def default_key_column(self) -> str:
        raise NotImplementedError

    def id_column(self) -> str | None:
        return None

    def sequence_url(self) -> str:
        raise NotImplementedError

    def normalize_sequence_id(self, value: Any) -> Any:
        """The sequence id in its one canonical form (one sequence, one sync state); raise
        ValueError when it cannot be one."""
        text = "" if value is None else str(value).strip()
        if not text:
            raise ValueError("sequence_id is empty")
        return text

    # -- wiring -------------------------------------------------------------------------------

    def prepare_spec(self, adapter: HookAdapter) -> PrepareSpec:
        validate_column_map(self.column_map, adapter.rules)
        return PrepareSpec(
            column_map=self.column_map,
            key_column=self.key_column or self.default_key_column(),
            rules=adapter.rules,
            default_region=self.default_region,
            id_column=self.id_column(),
            mask_values=flag("mask_values", self.mask_values),
        )

    def source_chunks(self) -> Iterator[pd.DataFrame]:
        """The source, chunk by chunk."""
        return source_chunks(
            sql=self.sql,
            source_conn_id=self.source_conn_id,
            source_path=self.source_path,
            file_format=self.file_format,
            contacts=self.contacts,
            chunk_size=self.chunk_size,
        )

    def total_rows(self) -> int | None:
        if isinstance(self.contacts, (list, pd.DataFrame)):
            return len(self.contacts)
        return None

    def hook_kwargs(self) -> dict[str, Any]:
        """What every service hook of this operator is built with: where the budget lives."""
        return {"rate_limit_conn_id": self.budget_conn_id()}

    def budget_conn_id(self) -> str | None:
        """``rate_limit_conn_id``; else ``None`` when the service connection names one (its
        hook reads it); else ``state_conn_id`` when that is PostgreSQL (the budget is then
        shared by every machine that shares the state)."""
        if self.rate_limit_conn_id:
            return self.rate_limit_conn_id
        extra = BaseHook.get_connection(self.connection_id()).extra_dejson or {}
        if any(name.endswith("rate_limit_conn_id") and value for name, value in extra.items()):
            return None
        if self.state_conn_id:
            conn_type = str(BaseHook.get_connection(self.state_conn_id).conn_type or "")
            if conn_type.lower() in ("postgres", "postgresql"):
                return self.state_conn_id
        return None

    def sync_state(self, adapter: HookAdapter) -> SyncState:
        """The state of this sequence of the account the connection reaches; rows an earlier
        version kept under the connection id join it."""
        scope = Scope(adapter.service, adapter.hook.account, str(self.sequence_id))
        #: The account the run's state belongs to (the Sync report link names it).
        self.sync_account = scope.account
        state = SyncState(state_engine(self.state_conn_id), scope)
        if state.merge_scope(self.connection_id()):
            self.log.info(
                "The sync state kept under connection %r now belongs to its account", self.connection_id()
            )
        return state

    @staticmethod
    def lease_group(context: Mapping[str, Any]) -> str:
        """The shards of one task in one DAG run share the sequence's lease."""
        ti = context["ti"]
        return f"{ti.dag_id}.{ti.task_id}:{context['run_id']}"

    def options(self, adapter: HookAdapter, **extra: Any) -> SyncOptions:
        batch_size = int(self.batch_size or adapter.max_batch_size)
        if not 1 <= batch_size <= adapter.max_batch_size:
            raise ValueError(f"batch_size must be between 1 and {adapter.max_batch_size}, got {batch_size}")
        return SyncOptions(
            batch_size=batch_size,
            dry_run=flag("dry_run", self.dry_run),
            incremental=bool(self.incremental),
            full_resync=flag("full_resync", self.full_resync),
            max_attempts=self.max_attempts,
            mask_values=flag("mask_values", self.mask_values),
            **extra,
        )

    @staticmethod
    def run_key(context: Mapping[str, Any]) -> str:
        """Stable across retries of one task instance, distinct between mapped shards."""
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return f"{ti.dag_id}.{ti.task_id}[{map_index}]:{context['run_id']}"

    def start_run(self, context: Mapping[str, Any], **extra_options: Any) -> SyncRun:
        try:
            # Rendered by now: a templated id is checked as it will be used.
            self.sequence_id = self.normalize_sequence_id(self.sequence_id)
        except ValueError as exc:
            # A setting, not an outage: retrying the task would fail the same way.
            raise AirflowFailException(f"{type(self).__name__}: {exc}") from None
        try:
            return self._new_run(context, **extra_options)
        except ValueError as exc:
            # The connection, the sequence or the mapping cannot work: nothing was sent.
            raise configuration_failed(exc).with_traceback(exc.__traceback__) from None

    def _new_run(self, context: Mapping[str, Any], **extra_options: Any) -> SyncRun:
        adapter = self.make_adapter()
        self._requests_before = dict(adapter.hook.request_counts)
        self._began = time.monotonic()
        # The account first: it names the state's scope, and every later request draws from
        # its rate budget.
        adapter.hook.account  # noqa: B018
        adapter.preflight()
        preflight_requests = sum(adapter.request_counts)
        spec = self.prepare_spec(adapter)
        state = self.sync_state(adapter)
        run_id = self.run_key(context)
        run = SyncRun(
            adapter,
            spec,
            state,
            run_id,
            self.options(adapter, **extra_options),
            total_rows=self.total_rows(),
            logger=self.log,
            lease=ScopeLease(state, run_id, group=self.lease_group(context), lock_timeout=self.lock_timeout),
        )
        run.preflight_requests = preflight_requests
        return run

    def run_pace(self, run: SyncRun) -> RunPace:
        """What this task's run spent since :meth:`start_run` (its account, preflight included),
        and the floor of those requests under the service's limits; with a deferred task's
        first part, if any."""
        adapter = run.adapter
        assert isinstance(adapter, HookAdapter)  # every adapter this operator makes is one
        hook = adapter.hook
        before = self._requests_before
        sent = {name: count - before.get(name, 0) for name, count in hook.request_counts.items()}
        reads = sum(count for name, count in sent.items() if name.startswith("GET "))
        pace = RunPace(
            write_requests=sum(sent.values()) - reads,
            read_requests=reads,
            seconds=time.monotonic() - self._began,
            floor_seconds=hook.floor_seconds(since=before),
        )
        return pace if self.earlier_pace is None else self.earlier_pace + pace

    def read_and_push(self, run: SyncRun) -> None:
        mode = "dry run: nothing is sent" if run.options.dry_run else "sending"
        self.log.info(
            "Syncing into %s sequence %s (%s); batches of %d; %s",
            self.display_name,
            self.sequence_id,
            self.sequence_url(),
            run.options.batch_size,
            mode,
        )
        try:
            run.run(self.source_chunks())
        except SyncConfigurationError as exc:
            raise configuration_failed(exc).with_traceback(exc.__traceback__) from None
        except SyncAbortedError:
            self.log.error("Stopped: every outcome so far is recorded, so a retry resumes from here")
            raise

    def emit_sequence_asset(self, context: Mapping[str, Any], dry_run: bool) -> None:
        """Through the alias, the Asset of the sequence this run resolved (a dry run changes none)."""
        if dry_run or "outlet_events" not in context:
            return
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias) and outlet.name == self.sequence_alias.name:
                context["outlet_events"][outlet].add(self.sequence_asset(self.sequence_id))

    def complete(self, context: Mapping[str, Any], result: SyncResult, run: SyncRun) -> dict[str, Any]:
        """Log the summary, push the result and apply the partial-failure policy."""
        # Only keys the state holds may stay out: a run that writes none has them nowhere else.
        value = result.to_xcom(max_keys=self.max_xcom_keys if run.writes_state else None)
        if "omitted" in value:
            value["keys_in_state"] = {
                "service": run.adapter.service,
                "sequence_id": str(self.sequence_id),
                "last_run_id": run.run_id,
                "state_conn_id": self.state_conn_id,
            }
            self.log.warning(
                "The result's %s left out of XCom: more than max_xcom_keys=%d keys. Every key's "
                "outcome is in the sync state (read_sync_state(), rows with last_run_id %r)",
                " and ".join(value["omitted"]),
                self.max_xcom_keys,
                run.run_id,
            )
        if run.options.dry_run:
            value["would_send"] = run.would_send
        stats = value["stats"]
        reasons = result.reasons()
        # Counts by reason stay in XCom when the keys do not (max_xcom_keys).
        value["reasons"] = dict(reasons)
        log_result(self.log, f"{self.display_name} sequence {self.sequence_id}", stats, reasons)
        if run.writes_state:
            # The run's counts, for the Sequence syncs view: it charts runs from these rather
            # than from every key's row.
            assert run.state is not None
            run.state.save_run(
                run.run_id,
                {**stats, REASONS_STAT: dict(reasons)},
                finished=True,
                pace=self.run_pace(run),
                reveal_values=flag("reveal_values", self.reveal_values) and not run.options.mask_values,
            )
        # Every distinct key counts, enrolled on an earlier night or now: a night where a
        # few known-bad rows are reported again is not a failing night. Contacts accepted but
        # not read back yet (wait_for_enrollment=False) are on their way, and contacts already
        # in the sequence are where they should be: neither is a failure.
        failed, keys = failed_keys(stats, reasons)
        share = failed / keys if keys else 0.0
        limit = self.max_not_processed_share
        if limit is not None and not run.options.dry_run and keys and share > limit:
            context["ti"].xcom_push(key="return_value", value=value)
            raise SyncFailedError(
                f"{failed} of {keys} contacts ({share:.0%}) were not processed, more "
                f"than max_not_processed_share={limit:.0%}; the result with every reason is in XCom"
            )
        self.emit_sequence_asset(context, run.options.dry_run)
        hook = getattr(run.adapter, "hook", None)
        self._lineage_run = {
            "service": run.adapter.service,
            "api_url": getattr(hook, "base_url", ""),
            "account": str(getattr(hook, "account", "") or ""),
            "added": 0 if run.options.dry_run else stats["added"],
        }
        return value

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the source read, the sequence written, column lineage, rows added."""
        return lineage_facets(self, getattr(self, "_lineage_run", None) or {})
