"""Receiver throughput and latency against a no-op aiohttp baseline: ``python -m bench.receiver``.

Every server and load generator runs in its own process: PostgreSQL (embedded, in a temporary
directory), the baseline, the real receiver and the load generator (wrk when installed, otherwise
a Python aiohttp client). See bench/README.md.
"""
