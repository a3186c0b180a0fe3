"""A Reply.io API v3 simulator, exactly as strict as the contract in ``shared/api/reply.md``.

Endpoints, with the key scope each needs:

============================================================  ======================
``GET  /v3/whoami``                                            (any valid key)
``GET  /v3/sequences``                                         ``sequences:read``
``GET  /v3/sequences/{id}``                                    ``sequences:read``
``GET  /v3/sequences/{id}/steps`` (a plain JSON array)         ``sequences:read``
``GET  /v3/sequences/{id}/contacts``                           ``sequences:read``
``POST /v3/sequences/{id}/contact-links/bulk``                 ``sequences:operate``
``POST /v3/sequences/{id}/contact-links/bulk-delete``          ``sequences:operate``
``POST /v3/contacts/import``                                   ``contacts:write``
``GET  /v3/contacts?email=``                                   ``contacts:read``
``GET  /v3/background-jobs/{jobId}``                           (any valid key)
============================================================  ======================

Every request passes, in this order: the key (401, empty body), the acting user (400/403),
the rate limit of the acting user (429), the scope (403), then the endpoint's own checks.

Choices of this simulator where the contract is silent:

- Visibility: the acting user sees only what they own. Someone else's sequence is a 404,
  someone else's contact is ``forbidden`` in a bulk add, ``notFound`` in a bulk delete and
  absent from ``GET /v3/contacts``; importing an email another user owns fails that item.
- Emails are unique across the account, compared case-insensitively.
- Request bodies are typed as the service's models are: a value of the wrong JSON type
  anywhere (``"7"`` or ``1.5`` for an integer, ``null`` or ``"true"`` for a boolean) rejects
  the whole request with a 400 listing every such value. Bodies must be ``application/json``
  (else 415). ``startFrom`` must carry an offset (``Z`` or ``+hh:mm``) and not be in the past.
- 400s for query parameters point at them with ``{"parameter": "top", "detail": ...}``
  instead of a JSON Pointer; body errors carry ``{"pointer": "/contactIds/2", "detail": ...}``.
- A link's ``currentStep`` is a step id: ``startStepId`` or else the sequence's first step.
- Import: ``skipExisting`` leaves a match as it is (``Skipped``); ``overwriteExisting``
  replaces every field the item carries; with neither, a match only gets the fields it lacks
  (still ``Updated``). Both at once is a 400. ``detectTimeZone`` and ``listIds`` are
  accepted and checked for type only. A missing or empty email counts as an invalid one.
- Background imports (``import_async_threshold``) are validated and applied when accepted;
  the 202 body is ``{"jobId", "status": "Scheduled"}`` and the job reports ``Processing``
  until ``job_delay`` real seconds have passed, then ``Done`` with ``"result"``: the same
  body a synchronous import answers. That ``result`` field is our assumption, not the docs'.
- Problem ``type`` is ``https://api.reply.io/problems/<code>``.

``behaviour="observed"`` answers as Reply's own CLI (``reply-team/reply-cli``) reports the
real server does (``shared/api/reply.md``, "What Reply's own CLI reports"); where that
evidence leaves a choice, the harder case for a client:

- Bulk add: every per-contact refusal is ``{"error": "invalidInput", "errorDetails":
  "Contact could not be added to sequence"}``, never ``contactAlreadyInSequence``. A member
  named again with a ``startStepId`` after its current step is moved there and answered
  ``added`` (``sim.moves``); with the same, an earlier or no step it is refused. A plan limit
  the request would pass is a whole-request 400 ``sequenceContact.contactLimitExceeded``
  (nothing added), a sequence without steps 400 ``sequenceContact.noStepsInSequence``.
  Archived sequences are accepted, in both behaviours (the CLI refuses them itself).
- Import: an item without ``firstName`` makes the whole call a 400 pinned to
  ``/items/<i>/firstName``. Statuses are lowercase; the user's own deleted contact is
  ``restored``; an email another user's contact holds is ``skipped`` with ``skipReason``
  (``contactDeleted`` or ``contactOwnedByTeammate``) and the item's ``id`` is that contact's.
- Background jobs: ``progress`` 0..1 and the result as a JSON string in ``jsonDataResult``.
- Identity: an organization key with neither ``X-User-Id`` nor ``X-User-Email`` is 403
  ``USER_REQUIRED``; with ``X-User-Email`` and no ``X-Team-Id``, or any key that reaches
  several teams without one, 403 ``TEAM_REQUIRED``. A missing scope is 403
  ``insufficient_scope``.
- Sequence contacts: ``currentStep`` is ``{stepId, displayName}``; a page holds at most 100
  items whatever ``top`` asks (silently: ``hasMore`` says more follow); a sequence the user
  cannot see answers an empty 200 instead of a 404.

Ground truth for both: ``enrolments``, ``readds`` (bulk adds that named a member again),
``moves`` and ``foreign_adds`` (bulk adds that named another user's contact).
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_sequences.testing.base import (
    DEFAULT_BEHAVIOUR,
    Behaviour,
    check_behaviour,
)
from airflow_provider_sequences.testing.faults import CannedResponse
from airflow_provider_sequences.testing.reply_app import RATE_LIMITS, ReplyApi, rate_limit_identity
from airflow_provider_sequences.testing.reply_data import ReplyData
from airflow_provider_sequences.testing.reply_records import KeyKind, email_key
from airflow_provider_sequences.testing.reply_requests import (
    PROBLEM_JSON,
    problem_body,
    retry_after,
)

__all__ = ["RATE_LIMITS", "ReplySimulator", "rate_limit_identity"]

# -- the simulator ----------------------------------------------------------------------------


class ReplySimulator(ReplyApi):
    """An in-memory Reply.io account behind a real HTTP server (see the module docstring).

    Set it up through the Python API (``add_user``, ``add_api_key``, ``add_sequence``,
    ``add_contact``), point a client at :attr:`url`, then read the ground truth
    (``enrolments``, ``sequence_contacts``, ``contact``) and :attr:`requests`. Every method is
    safe to call while the server thread runs.

    :param time_scale: simulated seconds per real second for the rate limits.
    :param enforce_rate_limits: answer 429 over 100 requests a minute or 3,000 an hour.
    :param contact_limit: plan limit on contacts active in sequences (``None``: no limit);
        over it, bulk add answers ``contactLimitExceeded`` for that contact.
    :param max_bulk_ids: most ``contactIds`` per bulk add or bulk delete (undocumented; 1000).
    :param max_import_items: most items per import (undocumented; 1000).
    :param import_rejects_whole_batch_on_invalid_email: one invalid email makes the whole
        import a 400 pointing at ``/items/<i>/email``; when False only that item fails.
    :param import_async_threshold: imports of more items than this answer 202 with a
        background job (``None``: never).
    :param job_delay: real seconds a background job takes before it reports ``Done``.
    :param behaviour: ``documented`` (the reference docs) or ``observed`` (what Reply's own
        CLI reports the real server does; see the module docstring).
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        enforce_rate_limits: bool = True,
        contact_limit: int | None = None,
        max_bulk_ids: int = 1000,
        max_import_items: int = 1000,
        import_rejects_whole_batch_on_invalid_email: bool = True,
        import_async_threshold: int | None = None,
        job_delay: float = 0.0,
        behaviour: Behaviour = DEFAULT_BEHAVIOUR,
    ) -> None:
        # The base builds the app, so the state must exist first.
        self.data = ReplyData(contact_limit, observed=check_behaviour(behaviour) == "observed")
        self.max_bulk_ids = max_bulk_ids
        self.max_import_items = max_import_items
        self.import_rejects_whole_batch_on_invalid_email = import_rejects_whole_batch_on_invalid_email
        self.import_async_threshold = import_async_threshold
        self.job_delay = job_delay
        super().__init__(time_scale=time_scale, enforce_rate_limits=enforce_rate_limits, behaviour=behaviour)

    # -- Python API for tests ------------------------------------------------------------------

    def add_user(self, email: str) -> int:
        """Create a user of the account; returns its id."""
        with self.lock:
            return self.data.add_user(email)

    def add_api_key(
        self,
        key: str,
        user_id: int,
        *,
        kind: KeyKind = "team",
        scopes: set[str] | None = None,
        members: list[int] | None = None,
        teams: list[int] | None = None,
    ) -> None:
        """Register an API key owned by ``user_id``.

        :param kind: ``"team"`` acts as its owner unless ``X-User-Id``/``X-User-Email`` names
            another allowed user; ``"organization"`` must always name the acting user.
        :param scopes: granted scopes (``None``: all of ``contacts:read``, ``contacts:write``,
            ``sequences:read``, ``sequences:operate``).
        :param members: users the key may act for besides its owner.
        :param teams: the teams the key reaches (default ``[1]``); observed, a key that reaches
            several needs ``X-Team-Id``.
        """
        with self.lock:
            self.data.add_api_key(key, user_id, kind, scopes, members, teams)

    def add_sequence(self, name: str, *, owner_user_id: int, status: str = "active", steps: int = 3) -> int:
        """Create a sequence with ``steps`` email steps; returns its id."""
        with self.lock:
            return self.data.add_sequence(name, owner_user_id, status, steps)

    def add_contact(self, email: str, *, owner_user_id: int, **fields: Any) -> int:
        """Create a contact; returns its id.

        ``fields`` are API field names (``firstName``, ``customFields``, ...) plus
        ``invalid=True`` to flag the contact invalid and ``deleted=True`` to make it a deleted
        one (an import restores or skips it). An empty ``email`` makes a contact without one.
        """
        invalid_flag = bool(fields.pop("invalid", False))
        deleted = bool(fields.pop("deleted", False))
        with self.lock:
            return self.data.add_contact(email, owner_user_id, invalid_flag, fields, deleted=deleted)

    def archive_sequence(self, sequence_id: int) -> None:
        """Archive a sequence (``isArchived``); a bulk add into it is still accepted."""
        with self.lock:
            self.data.sequences[sequence_id].is_archived = True

    def contact(self, contact_id: int) -> dict[str, Any]:
        """A contact as the API returns it; ``KeyError`` if unknown."""
        with self.lock:
            return self.data.contacts[contact_id].to_api()

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        """The contact with this email (any owner, case-insensitive), or ``None``."""
        with self.lock:
            contact_id = self.data.by_email.get(email_key(email))
            return self.data.contacts[contact_id].to_api() if contact_id is not None else None

    @property
    def enrolments(self) -> dict[tuple[int, int], int]:
        """Ground truth (a copy): (sequence id, contact id) -> times the contact was added."""
        with self.lock:
            return dict(self.data.enrolments)

    @property
    def readds(self) -> dict[tuple[int, int], int]:
        """Ground truth (a copy): (sequence id, contact id) -> bulk adds that named a contact
        already in that sequence (a sync should send none: observed, they move or refuse it)."""
        with self.lock:
            return dict(self.data.readds)

    @property
    def moves(self) -> dict[tuple[int, int], int]:
        """Observed ground truth: (sequence id, contact id) -> re-adds that moved a member forward."""
        with self.lock:
            return dict(self.data.moves)

    @property
    def foreign_adds(self) -> dict[tuple[int, int], int]:
        """Ground truth: (sequence id, contact id) -> bulk adds that named another user's contact."""
        with self.lock:
            return dict(self.data.foreign_adds)

    def sequence_contacts(self, sequence_id: int) -> list[dict[str, Any]]:
        """Ground truth: the contacts now in a sequence, in the order they were added.

        Each is ``{contactId, email, statusInSequence, currentStep, ignoreStepDelay,
        startFrom, addedAt}``; ``KeyError`` for an unknown sequence.
        """
        with self.lock:
            return self.data.sequence_contacts(sequence_id)

    # -- canned answers for the fault injector -------------------------------------------------

    def rate_limited_response(self, wait_seconds: float) -> CannedResponse:
        body = problem_body(429, "rate limit exceeded", "rateLimit.exceeded")
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"retry-after", retry_after(wait_seconds).encode()),
        ]
        return 429, headers, json.dumps(body).encode()

    def server_error_response(self) -> CannedResponse:
        body = problem_body(500, "an unexpected error occurred", "server.error")
        return 500, [(b"content-type", PROBLEM_JSON.encode())], json.dumps(body).encode()
