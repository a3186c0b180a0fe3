"""The Whippy adapter, by job: the adapter itself (:mod:`.adapter`), what a write carries
(:mod:`.items`), identities (:mod:`.identities`), the members read before a first night
(:mod:`.members`), the read-back (:mod:`.confirm`, its index :mod:`.readback`), lost writes
(:mod:`.resend`) and what the trigger shares (:mod:`.steps`)."""

from airflow_provider_sequences.adapters.whippy.adapter import WhippyAdapter
from airflow_provider_sequences.adapters.whippy.identities import WhippyIdentity, whippy_identity
from airflow_provider_sequences.adapters.whippy.items import WhippyEnrolment, to_items, whippy_rules

__all__ = [
    "WhippyAdapter",
    "WhippyEnrolment",
    "WhippyIdentity",
    "to_items",
    "whippy_identity",
    "whippy_rules",
]
