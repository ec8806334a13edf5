"""Everything that plays both roles on one machine, in one folder per job: ``run/`` (launchers,
the in-process grid), ``bench/`` (benchmarks and the leakage audit), ``report/`` (tables, plots
and the generated pages) and ``deploy/`` (the loopback deployment)."""
