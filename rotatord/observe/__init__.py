"""Observation adapters: logging setup, the audit log, metrics."""
