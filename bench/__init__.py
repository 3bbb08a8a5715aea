"""Benchmarks. Not part of the shipped packages; run with ``make bench``."""
