"""Shutdown benchmark: SIGTERM and SIGKILL of outlast's and its peers' workers with jobs running.

Entry point: ``python -m bench.shutdown`` (or ``python bench/shutdown/run.py``); see
bench/README.md.
"""
