"""Benchmarks (written next)."""
