"""Programs the benchmarks start as processes of their own (`python -m tools.NAME`, from benchmarks/)."""
