"""Exploratory probes kept as the record of measurements in docs/RESULTS.md (single process, no Ray)."""
