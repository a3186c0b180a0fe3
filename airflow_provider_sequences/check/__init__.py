"""A contract check for users with real keys: ``python -m airflow_provider_sequences.check``.

Run once before the first night with a real key. It calls, through the provider's own hooks,
every endpoint the sync relies on, prints each assumption the sync makes of the service as
``held``, ``violated`` or ``not seen``, and writes the shapes of the answers (field names and
JSON types, never a value) to a file to attach to a bug report.
"""

from __future__ import annotations

from airflow_provider_sequences.check.cli import main

__all__ = ["main"]
