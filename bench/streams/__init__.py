"""Side-by-side benchmark of outlast's durable streams against the protocol's reference server.

Entry point: ``python -m bench.streams`` (or ``python bench/streams/run.py``); see bench/README.md.
"""
