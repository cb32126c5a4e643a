"""Benchmarks on ../shared/data; results go to bench/results/ (markdown + json)."""
