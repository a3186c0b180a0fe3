"""A real Airflow deployment, end to end: ``make e2e`` and ``make e2e-celery`` (see README)."""
