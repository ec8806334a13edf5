"""Tables, plots and the generated pages (docs/results.md, docs/dfzsl.md, docs/privacy.md),
built from saved runs and the benchmarks' JSON, never by training."""
