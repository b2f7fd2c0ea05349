"""Benchmarks for clip-index (not part of the installed package)."""
