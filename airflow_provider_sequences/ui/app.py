"""The Sequence syncs view: a FastAPI app the api-server mounts at ``/sequence-syncs``.

Server-rendered HTML with inline SVG charts: nothing is fetched from elsewhere. Every route
needs a logged-in Airflow user (the api-server's own ``get_user``: its JWT cookie or a bearer
token), and shows only runs of DAGs the auth manager lets that user read (see
:mod:`~airflow_provider_sequences.ui.access`).

Configuration (``airflow.cfg`` section ``[sequences]`` or ``AIRFLOW__SEQUENCES__*``):

- ``ui_state_conn_ids``: the state databases the view may read, comma-separated connection
  ids, ``embedded`` for the default SQLite file under ``AIRFLOW_HOME`` (default: ``embedded``).
  The first is shown by default; ``?state=<conn id>`` picks another of the list.
- ``reveal_personal_values``: show emails and phone numbers unmasked (default ``False``).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import sqlalchemy as sa
from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from airflow_provider_sequences.sync.state import RUNS_TABLE
from airflow_provider_sequences.ui import queries
from airflow_provider_sequences.ui.access import RunAccess
from airflow_provider_sequences.ui.chart import requests_chart, run_series, runs_chart
from airflow_provider_sequences.ui.masking import mask_text
from airflow_provider_sequences.ui.queries import ScopeId

EMBEDDED = "embedded"
#: The logged-in Airflow user (the api-server's own dependency: JWT cookie or bearer token).
User = Annotated[Any, Depends(get_user)]
State = Annotated[str | None, Query()]
PAGE_SIZE = 50

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(["html"]),
)


def _setting(key: str, fallback: str) -> str:
    from airflow.configuration import conf

    return str(conf.get("sequences", key, fallback=fallback))


def state_conn_ids() -> list[str]:
    """The state databases the view may read ("" is the embedded SQLite file)."""
    names = [name.strip() for name in _setting("ui_state_conn_ids", EMBEDDED).split(",") if name.strip()]
    return ["" if name == EMBEDDED else name for name in names] or [""]


def reveal_personal_values() -> bool:
    return _setting("reveal_personal_values", "False").strip().lower() in ("true", "1", "yes", "on")


@functools.lru_cache(maxsize=8)
def _engine(state_conn_id: str) -> sa.Engine:
    from airflow_provider_sequences.sync_state import state_engine

    return state_engine(state_conn_id or None)


def _state(state: str | None) -> str:
    """The state connection id asked for, if the deployment lets the view read it: a user
    must not point the view at any database connection."""
    allowed = state_conn_ids()
    if state is None:
        return allowed[0]
    wanted = "" if state in ("", EMBEDDED) else state
    if wanted not in allowed:
        raise HTTPException(status_code=404, detail="no such state database configured for this view")
    return wanted


class View:
    """What one request needs: the user's access, the state's engine, helpers for templates."""

    def __init__(self, request: Request, user: Any, state: str | None) -> None:
        self.request = request
        self.access = RunAccess(user)
        self.state = _state(state)
        #: The ``state`` query parameter links carry (none for the default state).
        self.state_param = None if self.state == state_conn_ids()[0] else (self.state or EMBEDDED)
        self.engine = _engine(self.state)
        self.reveal = reveal_personal_values()
        # Read-only: the view never creates the state's tables.
        self.empty = not sa.inspect(self.engine).has_table(RUNS_TABLE)

    def url(self, name: str, scope: ScopeId | None = None, **params: Any) -> str:
        root = self.request.scope.get("root_path", "").rstrip("/")
        path = {"index": "/", "sequence": "/sequence", "csv": "/sequence.csv", "key": "/key"}[name]
        query: dict[str, Any] = {}
        if self.state_param:
            query["state"] = self.state_param
        if scope is not None:
            query.update(service=scope.service, account=scope.account, sequence=scope.sequence_id)
        query.update({k: v for k, v in params.items() if v not in (None, "")})
        return f"{root}{path}" + (f"?{urlencode(query)}" if query else "")

    def mask(self, text: str | None) -> str:
        return mask_text(text, reveal=self.reveal)

    @staticmethod
    def when(moment: Any) -> str:
        if isinstance(moment, str):
            moment = datetime.fromisoformat(moment)
        return moment.strftime("%Y-%m-%d %H:%M:%S") if isinstance(moment, datetime) else ""

    def render(self, template: str, **values: Any) -> HTMLResponse:
        page = _templates.get_template(template).render(
            url=self.url,
            mask=self.mask,
            when=self.when,
            reveal=self.reveal,
            state_param=self.state_param,
            state_label=self.state or "embedded SQLite",
            **values,
        )
        # The page is private to the user: no shared cache keeps it.
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    def readable_scopes(self) -> list[tuple[ScopeId, int, datetime]]:
        """Scopes with at least one run the user may read (with the count of those runs)."""
        if self.empty:
            return []
        keys = queries.run_keys(self.engine)
        self.access.learn(run_id for _, run_id in keys)
        readable: dict[ScopeId, int] = {}
        for scope, run_id in keys:
            if self.access.may_read(run_id):
                readable[scope] = readable.get(scope, 0) + 1
        return [(s, readable[s], last) for s, _, last in queries.scopes(self.engine) if s in readable]

    def readable_runs(self, scope: ScopeId) -> list[queries.RunSummary]:
        found = [] if self.empty else queries.runs(self.engine, scope)
        self.access.learn(r.run_id for r in found)
        return [r for r in found if self.access.may_read(r.run_id)]


def _view(
    request: Request,
    user: Any,
    state: str | None = None,
) -> View:
    return View(request, user, state)


def _reasons(view: View, run: queries.RunSummary) -> dict[str, int]:
    """The run's counts by reason: as it saved them, else counted from the keys it left (only
    when it has any: a night with none would count a million rows for nothing)."""
    if run.reasons is not None:
        return run.reasons
    if not run.count("not_processed"):
        return {}
    return queries.reasons_of_run(view.engine, run.scope, run.run_id)


def create_app() -> FastAPI:
    """The view's app; Airflow's own ``get_user`` guards every route."""
    # No /docs or /openapi.json: those would answer without a user.
    app = FastAPI(
        title="Sequence syncs",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(get_user)],
    )

    def scope_of(service: str, account: str, sequence: str) -> ScopeId:
        return ScopeId(service, account, sequence)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: User, state: State = None) -> HTMLResponse:
        view = _view(request, user, state)
        return view.render("index.html", scopes=view.readable_scopes())

    @app.get("/sequence", response_class=HTMLResponse)
    def sequence(
        request: Request,
        user: User,
        service: str,
        account: str,
        sequence: str,
        state: State = None,
        run: str | None = None,
        reason: str | None = None,
        key_prefix: str | None = None,
        after: str | None = None,
    ) -> HTMLResponse:
        view = _view(request, user, state)
        scope = scope_of(service, account, sequence)
        found = view.readable_runs(scope)
        if not found:
            raise HTTPException(status_code=404, detail="no runs you may read in this sequence")
        reasons = {r.run_id: _reasons(view, r) for r in found}
        series = run_series(found, [reasons[r.run_id] for r in found])
        selected = found[-1]
        if run:
            if not view.access.may_read(run):
                raise HTTPException(status_code=404, detail="no such run you may read")
            chosen = next((r for r in found if r.run_id == run), None) or queries.run(view.engine, scope, run)
            if chosen is None:
                raise HTTPException(status_code=404, detail="no such run in this sequence")
            selected = chosen
            reasons.setdefault(selected.run_id, _reasons(view, selected))
        page = queries.not_processed_page(
            view.engine,
            scope,
            selected.run_id,
            reason=reason or None,
            key_prefix=key_prefix or None,
            after=after,
            limit=PAGE_SIZE,
        )
        return view.render(
            "sequence.html",
            scope=scope,
            runs=found,
            reasons=reasons,
            series=series,
            outcomes_chart=runs_chart(found, series),
            requests_chart=requests_chart(found),
            floor=None,
            selected=selected,
            page=page,
            reason_filter=reason or "",
            key_prefix=key_prefix or "",
            after=after,
        )

    @app.get("/sequence.csv")
    def sequence_csv(
        request: Request,
        user: User,
        service: str,
        account: str,
        sequence: str,
        run: str,
        state: State = None,
        reason: str | None = None,
        key_prefix: str | None = None,
    ) -> StreamingResponse:
        view = _view(request, user, state)
        scope = scope_of(service, account, sequence)
        if view.empty or not view.access.may_read(run):
            raise HTTPException(status_code=404, detail="no such run you may read")

        def lines() -> Iterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["contact_key", "reason", "detail", "attempts", "updated_at"])
            rows = queries.iter_not_processed(
                view.engine, scope, run, reason=reason or None, key_prefix=key_prefix or None
            )
            for count, row in enumerate(rows, 1):
                writer.writerow(
                    [
                        view.mask(row["contact_key"]),
                        row["reason"],
                        view.mask(row["detail"]),
                        row["attempts"],
                        view.when(row["updated_at"]),
                    ]
                )
                if count % 1000 == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()

        name = f"not-processed-{scope.service}-{scope.sequence_id}.csv"
        return StreamingResponse(
            lines(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )

    @app.get("/key", response_class=HTMLResponse)
    def key(request: Request, user: User, key: str, state: State = None) -> HTMLResponse:
        view = _view(request, user, state)
        scopes = [scope for scope, _, _ in view.readable_scopes()]
        found = []
        for scope, row in queries.key_rows(view.engine, key.strip(), scopes):
            if not view.access.may_read(row["last_run_id"]):
                continue
            run_ids = [r for r in dict.fromkeys([row["first_run_id"], row["last_run_id"]]) if r]
            summaries = {r.run_id: r for r in queries.runs_by_id(view.engine, scope, run_ids)}
            touched = []
            for run_id in run_ids:
                if not view.access.may_read(run_id):
                    continue
                label = (
                    "first seen and last changed"
                    if run_id == row["first_run_id"] == row["last_run_id"]
                    else "first seen"
                    if run_id == row["first_run_id"]
                    else "last changed"
                )
                touched.append((label, run_id, summaries.get(run_id)))
            found.append((scope, row, touched))
        return view.render("key.html", key=key.strip(), found=found)

    @app.get("/{path:path}", include_in_schema=False)
    def elsewhere(path: str, user: User) -> None:
        # Last: any other path is refused without a user too, and is not found with one.
        raise HTTPException(status_code=404, detail="not found")

    return app
