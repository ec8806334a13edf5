"""Benchmarks and the leakage audit: each writes its figures as JSON under docs/benchmarks,
which the page builders in :mod:`simulations.report` render; what they share is ``common``."""
