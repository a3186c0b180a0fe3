"""The Airflow plugin that adds the Sequence syncs view to the UI (registered through the
``airflow.plugins`` entry point).

``fastapi_apps`` mounts the view in the api-server at ``/sequence-syncs``; ``external_views``
puts it in the UI's navigation, embedded at ``/plugin/sequence-syncs``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI

from airflow_provider_sequences.ui.paths import URL_PREFIX, view_path


class LazyView:
    """The view's app, built once: every Airflow process imports plugins, and only the
    api-server serves this one, so nothing of it is imported before."""

    def __init__(self) -> None:
        self._app: Any = None

    def build(self) -> Any:
        if self._app is None:
            from sqlalchemy.orm import configure_mappers

            from airflow_provider_sequences.ui.app import create_app

            self._app = create_app()
            # Airflow's models are mapped on their first query (a second or more): the view
            # asks which DAGs exist.
            configure_mappers()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.build()(scope, receive, send)


_view = LazyView()


@asynccontextmanager
async def _build_on_start(_app: FastAPI) -> AsyncIterator[None]:
    # The api-server enters its plugin apps' lifespans when it starts: the view is built then
    # (seconds of imports and set-up), not on a user's first request.
    from anyio import to_thread

    await to_thread.run_sync(_view.build)
    yield


app = FastAPI(lifespan=_build_on_start, docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/", _view)


class SequenceSyncsPlugin(AirflowPlugin):
    """Sequence syncs: what each Reply.io and Whippy sync run did, from the sync state."""

    name = "sequence_syncs"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Sequence syncs"}]
    external_views = [
        {
            "name": "Sequence syncs",
            "href": view_path("/"),
            "url_route": "sequence-syncs",
            "destination": "nav",
            "category": "browse",
        }
    ]
