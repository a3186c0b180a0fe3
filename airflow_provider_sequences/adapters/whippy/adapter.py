"""The Whippy adapter: up to 4,000 contacts per call, then read the enrolment back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import pandas as pd

from airflow_provider_sequences.adapters.base import HookAdapter, column_values, present
from airflow_provider_sequences.adapters.whippy.confirm import ReadBack
from airflow_provider_sequences.adapters.whippy.identities import WhippyIdentity, row_identities
from airflow_provider_sequences.adapters.whippy.items import (
    NESTED,
    WHIPPY_PLAIN_FIELDS,
    WhippyEnrolment,
    to_items,
    whippy_rules,
)
from airflow_provider_sequences.adapters.whippy.members import Members, without_members
from airflow_provider_sequences.adapters.whippy.readback import StepContacts
from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    SequencesApiError,
    SyncConfigurationError,
)
from airflow_provider_sequences.hooks.base import describe_shape
from airflow_provider_sequences.hooks.whippy import WHIPPY_MAX_CONTACTS_PER_CALL, WhippyHook
from airflow_provider_sequences.sync.contract import BatchOutcome
from airflow_provider_sequences.sync.hashes import hash_strings
from airflow_provider_sequences.sync.state import SyncState


class WhippyAdapter(ReadBack, HookAdapter):
    """Enrols contacts in a Whippy sequence: one write per 4,000 contacts, then a read-back.

    Whippy answers 202 and works in the background, silently ignoring contacts that lack
    what the step's channel needs or that are active in another step, so an accepted contact
    is only *pending* until :meth:`confirm` sees it in the step.

    What a write carries is in :mod:`.items`, who is in the sequence before the first night in
    :mod:`.members`, the read-back in :mod:`.confirm` (its index in :mod:`.readback`), and when
    a write whose answer was lost may be sent again in :mod:`.resend`.

    :param hook: the Whippy hook.
    :param sequence_id: the sequence to enrol into.
    :param enrolment: the call's options.
    :param poll_interval: seconds between read-backs while waiting for the enrolment.
    :param stable_polls: polls in a row without the step's count moving after which Whippy's
        background work counts as over even though some accepted contacts never arrived (it
        ignored them); used to decide when a batch whose answer was lost may be sent again.
    """

    service = "whippy"
    display_name = WhippyHook.hook_name
    max_batch_size: ClassVar[int] = WHIPPY_MAX_CONTACTS_PER_CALL
    resend_is_safe: ClassVar[bool] = False
    match_fields: ClassVar[tuple[str, ...]] = ("phone", "email", "external_id")

    def __init__(
        self,
        hook: WhippyHook,
        sequence_id: str,
        *,
        enrolment: WhippyEnrolment | None = None,
        poll_interval: float = 2.0,
        stable_polls: int = 3,
    ) -> None:
        self.hook = hook
        self.sequence_id = str(sequence_id).strip()
        self.enrolment = enrolment or WhippyEnrolment()
        self.step_id: str | None = self.enrolment.step_id
        self.step_channel: str | None = None
        self.sequence_title: str | None = None
        self._rules = whippy_rules(email_required=False)
        self.poll_interval = poll_interval
        self.stable_polls = max(int(stable_polls), 1)
        #: Seconds already waited elsewhere (a trigger) before :meth:`confirm`, for the details.
        self.waited: float | None = None
        # Writes whose answer was lost (see LostWrites).
        self._uncertain = set()
        self._lost = {}
        self._lost_at = None
        self._accepted_at = None
        # The read-back's position in the step (see ReadBack).
        self._pushed = []
        self._writes = 0
        self._baseline = None
        self._resumed = False
        self._cursor = None
        self._seen = StepContacts()
        self._span = None
        #: The sequence's members before the first write, when :meth:`read_members` read them.
        self._members: Members | None = None
        #: Whether Whippy accepted a write of this adapter (its settings work).
        self.accepted_writes = 0

    def preflight(self) -> None:
        try:
            sequence = self.hook.get_sequence(self.sequence_id)
        except SequencesApiError as exc:
            if exc.status == 404:
                raise SyncConfigurationError(f"Whippy sequence {self.sequence_id} does not exist") from None
            raise
        self.sequence_title = sequence.get("title")
        if sequence.get("status") == "draft":
            raise SyncConfigurationError(
                f"Whippy sequence {self.sequence_id} ({self.sequence_title!r}) is a draft and accepts no "
                "contacts: activate it in Whippy first"
            )
        # The fields of a sequence are undocumented: used when present, never required, but
        # for a list of steps to enrol into when no step_id says which.
        listed = sequence.get("steps")
        listed = listed if isinstance(listed, list) else None
        steps = [s for s in listed or [] if isinstance(s, Mapping) and isinstance(s.get("id"), (str, int))]
        if listed is not None and len(steps) != len(listed):
            # Steps without an id: an answer this adapter does not know, not a verdict.
            raise self.hook.unexpected(
                "GET",
                f"/v1/sequences/{self.sequence_id}",
                200,
                f"an answer of unexpected shape: steps are {describe_shape(listed)}",
            )
        if listed is not None and not steps:
            raise SyncConfigurationError(f"Whippy sequence {self.sequence_id} has no steps")
        if all(isinstance(s.get("position"), (int, float)) for s in steps):
            steps.sort(key=lambda s: s["position"])  # else in the order Whippy lists them
        by_id = {str(step["id"]): step for step in steps}
        if self.step_id is None:
            if not steps:
                raise SyncConfigurationError(
                    f"Whippy's answer for sequence {self.sequence_id} lists no steps: set step_id to "
                    "the step to enrol into"
                )
            self.step_id = str(steps[0]["id"])
        elif by_id and self.step_id not in by_id:
            raise SyncConfigurationError(
                f"step_id {self.step_id} is not a step of Whippy sequence {self.sequence_id}; "
                f"its steps are {list(by_id)}"
            )
        # Unknown channel type: email is not required; contacts Whippy ignores for lack of one
        # are reported notEnrolled by the read-back.
        self.step_channel = str(by_id.get(self.step_id, {}).get("channel_type") or "")
        self._rules = whippy_rules(email_required=self.step_channel == "email")
        if self.enrolment.from_channel:
            self._check_channel(self.enrolment.from_channel)
        resource = self.enrolment.custom_data_resource
        if resource not in ("contact", "step_contact"):
            raise SyncConfigurationError(
                f"custom_data_resource must be 'contact' or 'step_contact', not {resource!r}"
            )

    def _check_channel(self, wanted: str) -> None:
        channels = [c for c in self.hook.iter_channels() if isinstance(c, Mapping)]
        known = {str(c.get(f)) for c in channels for f in ("phone", "email") if c.get(f)}
        if "@" in wanted and not any("email" in c for c in channels):
            # Whippy's own client shows channels without an email: an email ``from`` cannot be
            # checked here, and Whippy's answer to the first write says whether it is one.
            self.hook.log.warning(
                "Whippy lists its channels without emails, so from_channel cannot be checked before sending"
            )
            return
        if wanted not in known:
            raise SyncConfigurationError(
                f"from_channel {wanted!r} is not a channel of this Whippy organization; "
                f"its channels are {sorted(known)}"
            )

    def is_row_error(self, error: SequencesApiError) -> bool:
        fields = [e.get("field") or "" for e in error.errors]
        return bool(fields) and all(f.startswith("to[") for f in fields)

    def may_be_row_error(self, error: SequencesApiError) -> bool:
        """A 422 that names no field: Whippy documents its errors as descriptions only, so the
        body may be about one contact of ``to`` without saying which."""
        return error.status == 422 and not error.errors

    # -- members before the first night -------------------------------------------------------

    def read_members(self) -> int:
        """Read every step contact of the sequence (every step, every status) before the first
        write, so that :meth:`push` sends nobody who is in it already: Whippy would reprocess
        (message again) a contact sent to the step it is in. For a sync state that knows
        nothing of the sequence yet (a first night, or a deleted state). Returns how many
        step contacts were read."""
        members = Members()
        for item in self.hook.iter_sequence_contacts(self.sequence_id):
            if isinstance(item, Mapping):
                members.add(item)
        self._members = members
        self.hook.log.info(
            "Read the %d step contacts of Whippy sequence %s before the first write: members are not sent",
            len(members),
            self.sequence_id,
        )
        return len(members)

    def start(self, *, fresh_state: bool) -> None:
        if fresh_state and self._members is None:
            self.read_members()

    def read_members_unless_known(self, state: SyncState) -> bool:
        """:meth:`read_members` when no run of this sync state has finished yet: then the state
        may not know everyone in the sequence (a first night, a deleted state, or a retry of a
        first night that died). Returns whether they were read."""
        if self._members is not None or state.any_run_finished():
            return False
        self.read_members()
        return True

    def identity(self, row: Mapping[str, Any]) -> str | WhippyIdentity | None:
        """The row's phone, lowercase email and external id, as one string (see
        :func:`whippy_identity`); :class:`~.readback.Waiting` says how a read-back matches them."""
        columns = {
            name: [row[name] if name in row and present(row[name]) else None]
            for name in ("external_id", "phone", "email")
        }
        return next(row_identities([row.get("key")], columns))

    def push(self, batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        outcome = BatchOutcome()
        batch = without_members(
            batch, outcome, self._members, sequence_id=self.sequence_id, step_id=self.step_id
        )
        if batch.empty:
            return outcome
        fields = [c for c in batch.columns if c in WHIPPY_PLAIN_FIELDS or c.split(".", 1)[0] in NESTED]
        # Column by column: a 4,000-row batch as records, item by item, cost more CPU than
        # its request (the identities are the ones :meth:`identity` makes of each record).
        columns = {name: column_values(batch[name]) for name in fields}
        keys = batch["key"].tolist()
        items = to_items(columns, len(keys))
        self._writes += 1
        self._pushed.append(hash_strings(keys))
        try:
            self._create(items)
        except OutcomeUnknownError:
            # Maybe applied: never re-send blindly (a contact re-sent to its step is messaged
            # again); the read-back will tell, and :meth:`confirm` may send them once more.
            self._uncertain.update(keys)
            self._lost.update(zip(keys, items, strict=True))
            self._lost_at = time.monotonic()
        else:
            self._accepted_at = time.monotonic()
            self.accepted_writes += 1
        outcome.pending = dict(zip(keys, row_identities(keys, columns), strict=True))
        return outcome

    def _create(self, items: list[dict[str, Any]]) -> None:
        self.hook.create_sequence_contacts(
            self.sequence_id,
            items,
            from_=self.enrolment.from_channel,
            step_id=self.step_id,
            schedule_at=self.enrolment.schedule_at,
            custom_data=self.enrolment.custom_data(),
            voice_options=self.enrolment.voice_options,
        )
