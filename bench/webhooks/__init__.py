"""Completion webhook benchmark: deliveries/s and job end → receiver latency (see run.py)."""
