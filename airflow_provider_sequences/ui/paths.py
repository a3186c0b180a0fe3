"""Where the view is served: small, so that a worker building a task's extra link imports
nothing of the view itself."""

from __future__ import annotations

from urllib.parse import urlsplit

URL_PREFIX = "/sequence-syncs"


def view_path(path: str = "/") -> str:
    """The view's path on the api-server, under ``[api] base_url``'s path if it has one."""
    from airflow.configuration import conf

    base = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base}{URL_PREFIX}{path}"
