"""The Sequence syncs view in Airflow's UI: runs over time, not-processed rows, key history."""
