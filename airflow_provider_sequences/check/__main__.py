"""``python -m airflow_provider_sequences.check --help``."""

from __future__ import annotations

from airflow_provider_sequences.check.cli import main

raise SystemExit(main())
