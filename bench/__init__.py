"""Benchmarks of airflow-provider-sequences against its simulators: ``make bench``.

``python -m bench --help`` lists the options; each scenario is described in ``bench/scenarios.py``
and the README's Performance section shows the published figures.
"""
