"""Hook for the Whippy public API (v1)."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

import requests

from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.base import (
    PageGuard,
    RateBucket,
    SequencesHook,
    iso_datetime,
    parse_wait,
    path_segment,
)

#: Documented limits per key: 10 writes a minute on the "time consuming" endpoints
#: (sequences, campaigns, contact lists), 25 requests a second on the rest.
WHIPPY_SEQUENCE_WRITES_PER_MINUTE = 10
WHIPPY_REQUESTS_PER_SECOND = 25
#: Contacts per create-sequence-contacts call (``to``: 1 to 4000).
WHIPPY_MAX_CONTACTS_PER_CALL = 4000
#: The page size a list is read with once a larger one was refused: a Whippy-written client
#: says the sequence-contacts list takes 1 to 100 (500 is documented only for another list).
WHIPPY_PAGE_SIZE = 100
#: The largest ``limit`` documented for any list: tried first, and kept while it works.
WHIPPY_MAX_PAGE = 500

_TIME_CONSUMING_PREFIXES = ("/v1/sequences", "/v1/campaigns", "/v1/contacts/lists")
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Fields a ``to`` item may carry, as the API names them.
WHIPPY_CONTACT_FIELDS = (
    "phone",
    "email",
    "name",
    "external_id",
    "language",
    "default_channel_id",
    "address",
    "birth_date",
    "properties",
)


class WhippyHook(SequencesHook):
    """Talks to the Whippy API v1 with an API key from an Airflow connection.

    Connection (type ``whippy``): the password holds the API key (sent as ``X-WHIPPY-KEY``);
    the host, when set, replaces ``https://api.whippy.co``. Extras:

    - ``sequence_writes_per_minute`` (10): writes to sequences, campaigns and contact lists;
    - ``requests_per_second`` (25): every other request;
    - ``timeout`` (60, read timeout in seconds), ``max_attempts`` (6);
    - ``request_deadline`` (300 s, the whole request), ``max_answer_mb`` (64),
      ``max_retry_wait`` (900 s: a longer wait asked for stops the run);
    - ``organization_id``: the organization the key belongs to; connections naming the same
      one share the sync state and the rate budget (else each key is its own account);
    - ``rate_limit_conn_id``: where the rate budget lives (see :mod:`.budget`);
    - ``page_size``: items per page when reading lists (1 to 500); by default 500 until
      Whippy refuses it, then 100;
    - ``rate_limit_time_scale`` (1): for simulators only, shortens the limit windows.

    Methods map one to one to API endpoints and return the parsed JSON.

    :param whippy_conn_id: the Airflow connection id (default ``whippy_default``).
    """

    conn_name_attr = "whippy_conn_id"
    default_conn_name = "whippy_default"
    conn_type = "whippy"
    hook_name = "Whippy"
    default_base_url = "https://api.whippy.co"
    api_prefix = "/v1"
    #: The web app, for links from Airflow's UI.
    web_url: ClassVar[str] = "https://app.whippy.co"

    def __init__(self, whippy_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(whippy_conn_id, **kwargs)

    # -- SequencesHook ------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"X-WHIPPY-KEY": self.api_key}

    def rate_buckets(self) -> list[RateBucket]:
        writes = int(self.extra_number("sequence_writes_per_minute", WHIPPY_SEQUENCE_WRITES_PER_MINUTE))
        per_second = int(self.extra_number("requests_per_second", WHIPPY_REQUESTS_PER_SECOND))
        return [
            RateBucket("time_consuming", ((writes, 60.0),)),
            RateBucket("standard", ((per_second, 1.0),)),
        ]

    def resolve_account(self) -> str:
        """``whippy:<host>:org-<id>`` when the connection names its organization (extra
        ``organization_id``; Whippy has no call that tells), else a keyed hash of the base URL
        and the key: keys of one organization then count as one account only when named so."""
        organization = self.extras.get("organization_id")
        if organization:
            return f"whippy:{urlsplit(self.base_url).netloc}:org-{organization}"
        return super().resolve_account()

    def bucket_for(self, method: str, path: str) -> str:
        if method.upper() in _WRITE_METHODS and path.startswith(_TIME_CONSUMING_PREFIXES):
            return "time_consuming"
        return "standard"

    def describe_error(self, body: dict[str, Any]) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        raw_errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        errors = [
            {"field": e.get("field") or "", "detail": e.get("description") or e.get("message") or ""}
            for e in raw_errors
            if e.get("field")
        ]
        general = [str(e.get("description") or "") for e in raw_errors if not e.get("field")]
        return None, "; ".join(d for d in general if d) or None, errors

    def retry_after(self, response: requests.Response) -> float | None:
        return parse_wait(response.headers.get("X-RateLimit-Remaining-Interval-Milliseconds"), scale=0.001)

    #: Base URL -> the page size a list read fell back to in this process (a larger one was refused).
    _refused_pages: ClassVar[dict[str, int]] = {}

    @property
    def page_size(self) -> int:
        """Items per page when this hook reads a whole list: the ``page_size`` extra, else the
        documented largest (500) until Whippy refuses it, then 100 (see :meth:`list_page`)."""
        if "page_size" in self.extras:
            return min(max(int(self.extra_number("page_size", WHIPPY_PAGE_SIZE)), 1), WHIPPY_MAX_PAGE)
        return self._refused_pages.get(self.base_url, WHIPPY_MAX_PAGE)

    def list_page(self, path: str, params: dict[str, Any], offset: int) -> dict[str, Any]:
        """One page of a list, :attr:`page_size` items from ``offset``.

        The largest ``limit`` of the sequence-contacts list is not documented (a Whippy-written
        client says 100; 500 is documented for another list): a page size Whippy refuses (400 or
        422) falls back to 100 for this base URL, in this process, and the page is asked again.
        A page size that is accepted but capped silently is no problem: see :meth:`pages`.
        """
        while True:
            size = self.page_size
            try:
                page: dict[str, Any] = self.request_json(
                    "GET", path, params={**params, "limit": size, "offset": offset}
                )
                return page
            except SequencesApiError as exc:
                if exc.status not in (400, 422) or size <= WHIPPY_PAGE_SIZE or "page_size" in self.extras:
                    raise
                self.log.warning(
                    "Whippy refused pages of %d (%s); reading pages of %d", size, exc.status, WHIPPY_PAGE_SIZE
                )
                self._refused_pages[self.base_url] = WHIPPY_PAGE_SIZE

    def check_credentials(self) -> str:
        page = self.list_channels(limit=1)
        channels = page.get("total", "?")
        return f"Connected to Whippy at {self.base_url}; the organization has {channels} channels"

    # -- endpoints ----------------------------------------------------------------------------

    def list_sequences(self, *, title: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """``GET /v1/sequences``: one page, ``{"data": [...], "total": n}``.

        :param title: filter by title.
        :param limit: page size (at most 500).
        :param offset: items to skip.
        """
        result = self.request_json(
            "GET", "/v1/sequences", params={"title": title, "limit": limit, "offset": offset}
        )
        return self.expect_object(result, "GET", "/v1/sequences", ("data", list), ("total", int))

    def iter_sequences(self, *, title: str | None = None) -> Iterator[dict[str, Any]]:
        """Every sequence of the organization, page by page."""
        return self.pages("/v1/sequences", {"title": title})

    def get_sequence(self, sequence_id: str) -> dict[str, Any]:
        """``GET /v1/sequences/{id}``: the sequence with its steps (the ``data`` object)."""
        path = f"/v1/sequences/{path_segment(sequence_id, 'Whippy sequence id')}"
        result = self.expect_object(self.request_json("GET", path), "GET", path)
        # The sequence's fields are undocumented: only its being an object is required.
        return self.expect_object(result.get("data", result), "GET", path)

    def create_sequence_contacts(
        self,
        sequence_id: str,
        to: Sequence[dict[str, Any]],
        *,
        from_: str | None = None,
        step_id: str | None = None,
        schedule_at: datetime | str | None = None,
        custom_data: dict[str, Any] | None = None,
        voice_options: dict[str, Any] | None = None,
    ) -> Any:
        """``POST /v1/sequences/{id}/contacts``: add contacts (creating missing ones) to a step.

        Whippy answers 202 and does the work in the background; contacts that lack what the
        step's channel needs are silently ignored, so read the outcome back with
        :meth:`list_sequence_contacts`. The answer's body is undocumented and returned as is.

        This write is not retried when its answer is lost: a contact sent again to the step
        it is in is reprocessed (messaged again). It raises
        :class:`~airflow_provider_sequences.exceptions.OutcomeUnknownError` instead, so the
        caller can read back what happened.

        :param sequence_id: the sequence.
        :param to: 1 to 4000 contacts: ``phone`` (required, E.164), ``email``, ``name``,
            ``external_id``, ``language``, ``default_channel_id``, ``address`` (``address_line_one``,
            ``address_line_two``, ``city``, ``state``, ``country``, ``post_code``), ``birth_date``
            (``day``, ``month``, ``year``), ``properties`` (custom object properties).
        :param from_: phone or email of one of the organization's channels (the API's ``from``).
        :param step_id: the step to add to (default: the first).
        :param schedule_at: when the contacts start (an aware datetime or ISO 8601 text).
        :param custom_data: ``{"custom_object_id": ..., "resource": "contact"|"step_contact"}``.
        :param voice_options: default call flow for inbound calls, passed through as given.
        """
        body: dict[str, Any] = {"to": list(to)}
        if from_ is not None:
            body["from"] = from_
        if step_id is not None:
            body["step_id"] = step_id
        if schedule_at is not None:
            body["schedule_at"] = iso_datetime(schedule_at)
        if custom_data is not None:
            body["custom_data"] = custom_data
        if voice_options is not None:
            body["voice_options"] = voice_options
        return self.request_json(
            "POST",
            f"/v1/sequences/{path_segment(sequence_id, 'Whippy sequence id')}/contacts",
            json=body,
            repeat_safe=False,
        )

    def list_sequence_contacts(
        self,
        sequence_id: str,
        *,
        limit: int = WHIPPY_PAGE_SIZE,
        offset: int = 0,
        status: str | None = None,
        step_ids: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """``GET /v1/sequences/{id}/contacts``: one page of step contacts.

        Answers ``{"data": [{id, status, step_id, sequence_id, scheduled_at, contact: {id,
        name, email, phone, ...}}], "total": n}``.

        :param status: ``pending``, ``active``, ``inactive``, ``moved``, ``complete``, ``removed``.
        :param step_ids: only these steps.
        """
        path = f"/v1/sequences/{path_segment(sequence_id, 'Whippy sequence id')}/contacts"
        result = self.request_json(
            "GET",
            path,
            params={
                "limit": limit,
                "offset": offset,
                "status": status,
                "step_ids": ",".join(step_ids) if step_ids else None,
            },
        )
        # ``total`` is optional: pages end on it when it is there (see :meth:`pages`).
        return self.expect_object(result, "GET", path, ("data", list))

    def sequence_contact_pages(
        self, sequence_id: str, offset: int, *, step_ids: Sequence[str] | None = None
    ) -> Generator[ListPage, None, None]:
        """The pages of a sequence's step contacts from ``offset`` to the end, each fetched (by
        one other thread) while the one before it is read (see :meth:`list_pages`)."""
        params = {"step_ids": ",".join(step_ids) if step_ids else None}
        path = f"/v1/sequences/{path_segment(sequence_id, 'Whippy sequence id')}/contacts"
        return self.list_pages(path, params, offset, prefetch=True)

    def iter_sequence_contacts(
        self, sequence_id: str, *, status: str | None = None, step_ids: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every step contact of a sequence, page by page."""
        return self.pages(
            f"/v1/sequences/{path_segment(sequence_id, 'Whippy sequence id')}/contacts",
            {"status": status, "step_ids": ",".join(step_ids) if step_ids else None},
        )

    def count_sequence_contacts(self, sequence_id: str, *, step_ids: Sequence[str] | None = None) -> int:
        """How many step contacts the list holds: its ``total`` (one request), or, from an
        answer without one, by reading every page."""
        page = self.list_sequence_contacts(sequence_id, limit=1, step_ids=step_ids)
        total = page_total(page)
        if total is not None:
            return total
        return sum(1 for _ in self.iter_sequence_contacts(sequence_id, step_ids=step_ids))

    def list_channels(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """``GET /v1/channels``: ``{"data": [{id, name, phone, type, ...}], "total": n}``;
        Whippy's own client shows no ``email`` and maybe no ``total``: only the list is required."""
        result = self.request_json("GET", "/v1/channels", params={"limit": limit, "offset": offset})
        return self.expect_object(result, "GET", "/v1/channels", ("data", list))

    def iter_channels(self) -> Iterator[dict[str, Any]]:
        """Every channel of the organization, page by page."""
        return self.pages("/v1/channels", {})

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a list, :attr:`page_size` at a time (see :meth:`list_pages`)."""
        for page in self.list_pages(path, params, 0):
            yield from page.items

    def list_pages(
        self, path: str, params: dict[str, Any], offset: int, *, prefetch: bool = False
    ) -> Generator[ListPage, None, None]:
        """The pages of a list from ``offset`` to its end, :attr:`page_size` items at a time.

        Whatever the real largest ``limit`` is, a page may hold fewer items than asked for
        without being the last (a server that caps the limit silently). So the list ends when
        the items read reach the page's ``total``, or, on an answer without a ``total``, at the
        first empty page: one request more, never a list cut short.

        ``prefetch``: each page is requested as soon as the one before it arrived, by one other
        thread, while the caller reads that one: the same requests in the same order, but
        Whippy builds a page while this process reads the last one.
        """
        guard = PageGuard(self, path, WHIPPY_MAX_PAGE)

        def fetch(at: int) -> dict[str, Any]:
            return self.expect_object(self.list_page(path, params, at), "GET", path, ("data", list))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="whippy-read") as fetcher:
            following = fetcher.submit(fetch, offset) if prefetch else None
            while True:
                page = following.result() if following is not None else fetch(offset)
                items: list[Any] = page["data"]
                given = page_total(page)
                # Without a total, the end is the first empty page.
                total = offset + len(items) if given is None else given
                done = not items or (given is not None and offset + len(items) >= total)
                # A short page with more to come is no contradiction (a silently capped limit).
                guard.check(items, offset=offset, more=given is not None and offset + len(items) < given)
                following = fetcher.submit(fetch, offset + len(items)) if prefetch and not done else None
                yield ListPage(offset, items, total)
                if done:
                    return
                offset += len(items)


class ListPage(NamedTuple):
    """One page of a list: where it starts, its items, and the list's total (when the answer
    gave none, the items read so far)."""

    offset: int
    items: list[Any]
    total: int


def page_total(page: Any) -> int | None:
    """A list answer's ``total``, or ``None`` when it has none (or not a whole number)."""
    total = page.get("total") if isinstance(page, dict) else None
    if isinstance(total, bool) or not isinstance(total, (int, str)):
        return None
    try:
        return int(total)
    except ValueError:
        return None
