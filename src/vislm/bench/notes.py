"""The prose of BENCHMARKS.md: what the measured vislm path does to be fast, and, for
each goal the run missed, what limits it (with the run's own numbers)."""

from __future__ import annotations


def notes(results: dict) -> list:
    return []
