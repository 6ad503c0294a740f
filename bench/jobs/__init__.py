"""Side-by-side benchmark of outlast's jobs against Dramatiq, Celery, RQ and arq on one Redis.

Entry point: ``python -m bench.jobs`` (or ``python bench/jobs/run.py``); see bench/README.md.
"""
