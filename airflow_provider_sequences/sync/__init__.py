"""The sync engine: plain Python and pandas, no Airflow imports."""
