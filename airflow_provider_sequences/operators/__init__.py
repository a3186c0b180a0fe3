"""Operators that enrol contacts from upstream tables into sequences."""
