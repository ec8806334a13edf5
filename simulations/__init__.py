"""Launchers, sweeps and benchmarks."""
