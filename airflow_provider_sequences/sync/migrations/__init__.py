"""Alembic migrations of the sync state's schema (see :mod:`..schema`)."""
