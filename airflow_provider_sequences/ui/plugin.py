"""The Airflow plugin that adds the Sequence syncs view to the UI (registered through the
``airflow.plugins`` entry point).

``fastapi_apps`` mounts the view in the api-server at ``/sequence-syncs``; ``external_views``
puts it in the UI's navigation, embedded at ``/plugin/sequence-syncs``.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_sequences.ui.paths import URL_PREFIX, view_path


class LazyApp:
    """The view's ASGI app, built on its first request: every Airflow process imports plugins,
    and only the api-server serves this one."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_provider_sequences.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


app = LazyApp()


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
