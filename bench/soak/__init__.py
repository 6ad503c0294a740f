"""Soak benchmark: a real ``outlast serve`` (SQLite) under steady relay load for minutes, with
its WAL, RSS and file descriptors sampled (``python -m bench.soak``)."""
