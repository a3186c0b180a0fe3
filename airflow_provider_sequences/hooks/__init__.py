"""Hooks for the sequence services."""
