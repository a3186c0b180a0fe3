"""The in-memory data behind the Reply.io simulator (what the service holds, not a sync state):
users, keys, sequences, contacts, links.

Nothing here locks or speaks HTTP: :class:`~airflow_provider_sequences.testing.reply.ReplySimulator`
validates requests, holds its lock and calls these methods. Ids of each kind start in their
own range (users 1, sequences 1001, steps 50001, contacts 100001) so a client that sends one
kind of id where another belongs meets "not found" instead of a lucky match.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from airflow_provider_sequences.testing.reply_records import (
    CONTACT_FIELDS,
    OBSERVED_REFUSAL,
    SCOPES,
    SEQUENCE_STATUSES,
    ApiKey,
    BulkAdd,
    Contact,
    Job,
    KeyKind,
    Link,
    Sequence,
    _now_iso,
    email_key,
)


class ReplyData:
    """Everything the simulated Reply account holds. Callers hold the simulator's lock."""

    def __init__(self, contact_limit: int | None = None, *, observed: bool = False) -> None:
        self.contact_limit = contact_limit
        #: Answer as Reply's own CLI reports the real server does (see the simulator's docstring).
        self.observed = observed
        self.users: dict[int, str] = {}
        self.keys: dict[str, ApiKey] = {}
        self.sequences: dict[int, Sequence] = {}
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, int] = {}
        # sequence id -> contact id -> link, in the order contacts were added.
        self.links: dict[int, dict[int, Link]] = {}
        self.enrolments: dict[tuple[int, int], int] = {}
        #: (sequence, contact) -> bulk adds that named a contact already in the sequence.
        self.readds: dict[tuple[int, int], int] = {}
        #: Observed: (sequence, contact) -> re-adds that moved a member to a later step.
        self.moves: dict[tuple[int, int], int] = {}
        #: (sequence, contact) -> bulk adds that named a contact another user owns.
        self.foreign_adds: dict[tuple[int, int], int] = {}
        self.jobs: dict[str, Job] = {}
        self._user_ids = itertools.count(1)
        self._sequence_ids = itertools.count(1001)
        self._step_ids = itertools.count(50001)
        self._contact_ids = itertools.count(100001)

    # -- set-up --------------------------------------------------------------------------------

    def add_user(self, email: str) -> int:
        if self.user_by_email(email) is not None:
            raise ValueError(f"a user with email {email!r} exists already")
        user_id = next(self._user_ids)
        self.users[user_id] = email
        return user_id

    def user_by_email(self, email: str) -> int | None:
        wanted = email_key(email)
        return next((uid for uid, known in self.users.items() if email_key(known) == wanted), None)

    def add_api_key(
        self,
        key: str,
        user_id: int,
        kind: KeyKind,
        scopes: set[str] | None,
        members: list[int] | None,
        teams: list[int] | None = None,
    ) -> None:
        unknown_users = {user_id, *(members or [])} - set(self.users)
        if unknown_users:
            raise ValueError(f"unknown user ids: {sorted(unknown_users)}")
        if kind not in ("team", "organization"):
            raise ValueError(f"kind must be 'team' or 'organization', not {kind!r}")
        if scopes is not None and not scopes <= SCOPES:
            raise ValueError(f"unknown scopes: {sorted(scopes - SCOPES)}")
        self.keys[key] = ApiKey(
            key,
            user_id,
            kind,
            frozenset(SCOPES if scopes is None else scopes),
            frozenset(members or []),
            frozenset(teams or [1]),
        )

    def add_sequence(self, name: str, owner_user_id: int, status: str, steps: int) -> int:
        if owner_user_id not in self.users:
            raise ValueError(f"unknown user id {owner_user_id}")
        if status not in SEQUENCE_STATUSES:
            raise ValueError(f"status must be one of {sorted(SEQUENCE_STATUSES)}, not {status!r}")
        sequence_id = next(self._sequence_ids)
        step_ids = [next(self._step_ids) for _ in range(steps)]
        self.sequences[sequence_id] = Sequence(sequence_id, name, status, owner_user_id, step_ids)
        self.links[sequence_id] = {}
        return sequence_id

    def add_contact(
        self,
        email: str | None,
        owner_user_id: int,
        invalid: bool,
        fields: dict[str, Any],
        *,
        deleted: bool = False,
    ) -> int:
        if owner_user_id not in self.users:
            raise ValueError(f"unknown user id {owner_user_id}")
        unknown = set(fields) - set(CONTACT_FIELDS) - {"customFields"}
        if unknown:
            raise TypeError(f"unknown contact fields: {sorted(unknown)}")
        if email and email_key(email) in self.by_email:
            raise ValueError(f"a contact with email {email!r} exists already")
        custom = [dict(c) for c in fields.pop("customFields", None) or []]
        contact_id = self._create_contact(owner_user_id, {**fields, "email": email or None}, custom, invalid)
        self.contacts[contact_id].deleted = deleted
        return contact_id

    def _create_contact(
        self, owner_user_id: int, fields: dict[str, Any], custom: list[dict[str, Any]], invalid: bool
    ) -> int:
        contact_id = next(self._contact_ids)
        contact = Contact(contact_id, owner_user_id, fields, custom, invalid)
        self.contacts[contact_id] = contact
        if contact.email:
            self.by_email[email_key(contact.email)] = contact_id
        return contact_id

    # -- reads ---------------------------------------------------------------------------------

    def visible_sequence(self, sequence_id: int, user_id: int) -> Sequence | None:
        """The sequence if the acting user may see it: only its owner does."""
        sequence = self.sequences.get(sequence_id)
        return sequence if sequence is not None and sequence.owner_user_id == user_id else None

    def list_sequences(self, user_id: int, status: str | None, name: str | None) -> list[Sequence]:
        return [
            s
            for s in self.sequences.values()
            if s.owner_user_id == user_id
            and (status is None or s.status == status)
            and (name is None or name.lower() in s.name.lower())
        ]

    def find_contact(self, email: str, user_id: int) -> Contact | None:
        contact_id = self.by_email.get(email_key(email))
        contact = self.contacts.get(contact_id) if contact_id is not None else None
        visible = contact is not None and contact.owner_user_id == user_id and not contact.deleted
        return contact if visible else None

    def sequence_contacts(self, sequence_id: int, *, observed: bool = False) -> list[dict[str, Any]]:
        sequence = self.sequences[sequence_id]
        return [
            {
                "contactId": link.contact_id,
                "email": self.contacts[link.contact_id].email or None,
                "statusInSequence": link.status,
                "currentStep": sequence.step_object(link.current_step) if observed else link.current_step,
                "ignoreStepDelay": link.ignore_step_delay,
                "startFrom": link.start_from,
                "addedAt": link.added_at,
            }
            for link in self.links[sequence_id].values()
        ]

    def _active_contacts(self) -> set[int]:
        return {
            contact_id
            for links in self.links.values()
            for contact_id, link in links.items()
            if link.status == "active"
        }

    # -- writes --------------------------------------------------------------------------------

    def bulk_add(
        self, sequence: Sequence, user_id: int, request: BulkAdd
    ) -> tuple[list[int], dict[str, dict[str, str]]]:
        """Add contacts one by one (non-atomic); answers ``(added, notProcessed)``."""
        added: list[int] = []
        not_processed: dict[str, dict[str, str]] = {}
        links = self.links[sequence.id]
        # Only the plan limit needs the contacts active anywhere; gathering them walks every
        # link of every sequence, so a bulk add without a limit skips it.
        active = self._active_contacts() if self.contact_limit is not None else set()
        first_step = sequence.step_ids[0] if sequence.step_ids else None
        start_step = request.start_step_id if request.start_step_id is not None else first_step
        added_at = _now_iso()  # one request, one moment
        for contact_id in dict.fromkeys(request.contact_ids):  # duplicates: the first one counts
            key = (sequence.id, contact_id)
            contact = self.contacts.get(contact_id)
            if contact is not None and contact.owner_user_id != user_id:
                self.foreign_adds[key] = self.foreign_adds.get(key, 0) + 1
            link = links.get(contact_id)
            if link is not None:
                self.readds[key] = self.readds.get(key, 0) + 1
                if self.observed and self._moves_forward(sequence, link, request.start_step_id):
                    # Reply's CLI: a later start step moves the member on, skipping the steps
                    # between, and the answer says "added".
                    link.current_step = request.start_step_id
                    self.moves[key] = self.moves.get(key, 0) + 1
                    added.append(contact_id)
                    continue
            refusal = self._refusal(contact_id, sequence.id, user_id, active)
            if refusal is not None:
                documented = {"error": refusal[0], "errorDetails": refusal[1]}
                not_processed[str(contact_id)] = dict(OBSERVED_REFUSAL) if self.observed else documented
            else:
                if request.remove_from_existing:
                    for other_id, other_links in self.links.items():
                        if other_id != sequence.id:
                            other_links.pop(contact_id, None)
                links[contact_id] = Link(
                    contact_id, start_step, request.ignore_step_delay, request.start_from, added_at=added_at
                )
                self.enrolments[key] = self.enrolments.get(key, 0) + 1
                active.add(contact_id)
                added.append(contact_id)
        return added, not_processed

    @staticmethod
    def _moves_forward(sequence: Sequence, link: Link, start_step_id: int | None) -> bool:
        if start_step_id is None or start_step_id not in sequence.step_ids:
            return False
        current = sequence.step_ids.index(link.current_step) if link.current_step in sequence.step_ids else -1
        return sequence.step_ids.index(start_step_id) > current

    def exceeds_contact_limit(self, contact_ids: list[int], sequence_id: int, user_id: int) -> bool:
        """Observed: whether adding these contacts would pass the plan's limit (the whole
        request is then refused)."""
        if self.contact_limit is None:
            return False
        active = self._active_contacts()
        links = self.links[sequence_id]
        new = {
            c
            for c in contact_ids
            if c not in active
            and c not in links
            and (contact := self.contacts.get(c)) is not None
            and not contact.deleted
            and contact.owner_user_id == user_id
        }
        return len(active) + len(new) > self.contact_limit

    def _refusal(
        self, contact_id: int, sequence_id: int, user_id: int, active: set[int]
    ) -> tuple[str, str] | None:
        """Why a contact cannot be added, as (slug, details), checked in the documented order."""
        contact = self.contacts.get(contact_id)
        if contact is None or contact.deleted:
            return "contactNotFound", f"contact {contact_id} does not exist"
        if contact.owner_user_id != user_id:
            return "forbidden", f"user {user_id} may not act for the owner of contact {contact_id}"
        if not contact.email or contact.invalid:
            what = "has no email address" if not contact.email else "is marked invalid"
            return "invalidInput", f"contact {contact_id} {what}"
        if contact_id in self.links[sequence_id]:
            return "contactAlreadyInSequence", f"contact {contact_id} is already in sequence {sequence_id}"
        if self.contact_limit is not None and contact_id not in active and len(active) >= self.contact_limit:
            return "contactLimitExceeded", f"the plan allows {self.contact_limit} contacts in sequences"
        return None

    def bulk_delete(self, sequence: Sequence, user_id: int, contact_ids: list[int]) -> dict[str, Any]:
        unique = list(dict.fromkeys(contact_ids))
        links = self.links[sequence.id]
        removed: list[int] = []
        not_found = not_in_sequence = 0
        for contact_id in unique:
            contact = self.contacts.get(contact_id)
            if contact is None or contact.owner_user_id != user_id:
                not_found += 1
            elif links.pop(contact_id, None) is None:
                not_in_sequence += 1
            else:
                removed.append(contact_id)
        return {
            "requested": len(unique),
            "removed": len(removed),
            "notFound": not_found,
            "notInSequence": not_in_sequence,
            "removedIds": removed,
        }

    def _import_existing(
        self, existing: Contact, item: dict[str, Any], skip_reason: str | None, skip: bool, overwrite: bool
    ) -> tuple[str, str | None]:
        """An imported item whose email names a contact: its status and skip reason."""
        if skip_reason is not None:
            return "Skipped", skip_reason
        if skip:
            return "Skipped", "contactExists"
        self._update(existing, item, overwrite=overwrite)
        if existing.deleted:
            existing.deleted = False
            return ("Restored" if self.observed else "Updated"), None
        return "Updated", None

    def import_contacts(
        self, user_id: int, items: list[dict[str, Any]], errors: list[str | None], options: dict[str, Any]
    ) -> dict[str, Any]:
        """Upsert contacts by email, in input order; ``errors[i]`` fails item ``i`` up front.

        Observed: statuses are lowercase; a contact of the user's that was deleted is
        ``restored``; an email another user holds is ``skipped`` with a ``skipReason``, and the
        item names that user's contact.
        """
        results: list[dict[str, Any]] = []
        counts = dict.fromkeys(("Created", "Updated", "Restored", "Skipped", "Failed"), 0)
        skip, overwrite = bool(options.get("skipExisting")), bool(options.get("overwriteExisting"))
        contacts, by_email, get_id = self.contacts, self.by_email, self.by_email.get
        observed = self.observed
        for item, error in zip(items, errors, strict=True):
            existing = None
            email = ""
            skip_reason = None
            if error is None:
                email = email_key(str(item.get("email") or ""))
                existing = contacts.get(get_id(email, -1))
                if existing is not None and existing.owner_user_id != user_id:
                    if observed:
                        skip_reason = "contactDeleted" if existing.deleted else "contactOwnedByTeammate"
                    else:
                        error = "a contact with this email belongs to another user"
            if error is not None:
                status, contact_id = "Failed", None
            elif existing is None:
                # What _create_contact does, inlined: this runs for every new contact, and the
                # email's key is already known.
                fields = dict(zip(CONTACT_FIELDS, map(item.get, CONTACT_FIELDS), strict=True))
                custom = [dict(c) for c in item.get("customFields") or ()]
                contact_id = next(self._contact_ids)
                contacts[contact_id] = Contact(contact_id, user_id, fields, custom, False)
                if fields["email"]:
                    by_email[email] = contact_id
                status = "Created"
            else:
                status, skip_reason = self._import_existing(existing, item, skip_reason, skip, overwrite)
                contact_id = existing.id
            counts[status] += 1
            if observed:
                result: dict[str, Any] = {"id": contact_id, "status": status.lower(), "error": error}
                if skip_reason is not None:
                    result["skipReason"] = skip_reason
                results.append(result)
            else:
                results.append({"id": contact_id, "status": status, "error": error})
        summary = {
            "items": results,
            "added": counts["Created"],
            "updated": counts["Updated"],
            "skipped": counts["Skipped"],
            "failed": counts["Failed"],
        }
        if observed:
            summary["restored"] = counts["Restored"]
        return summary

    @staticmethod
    def _update(contact: Contact, item: dict[str, Any], *, overwrite: bool) -> None:
        # Without overwriteExisting an import only fills what the contact lacks.
        for name in CONTACT_FIELDS:
            if name != "email" and item.get(name) is not None and (overwrite or not contact.fields.get(name)):
                contact.fields[name] = item[name]
        by_key = {(c.get("id"), c.get("name")): c for c in contact.custom_fields}
        for custom in item.get("customFields") or []:
            key = (custom.get("id"), custom.get("name"))
            if overwrite or key not in by_key:
                by_key[key] = dict(custom)
        contact.custom_fields = list(by_key.values())

    def add_job(self, user_id: int, result: dict[str, Any], delay: float) -> Job:
        job = Job(uuid.uuid4().hex, user_id, result, delay)
        self.jobs[job.id] = job
        return job
