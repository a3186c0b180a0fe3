"""Apache Airflow provider that enrols contacts into Reply.io and Whippy sequences."""

from __future__ import annotations

__version__ = "0.2.0.dev0"

__all__ = ["__version__"]
