"""Relay benchmark: the fake SSE upstream read directly against the same upstream read through
outlast's relay (SQLite and Redis stores).

Entry point: ``python -m bench.relay`` (or ``python bench/relay/run.py``); see bench/README.md.
"""
