"""Stores, chosen by URL scheme and imported lazily: ``sqlite:///path`` or ``redis://host:port/db``.

The layers, each depending only on those above it::

    base.py            the contract (Store) and its data types: what the server and worker use
    streams_logic.py   the rules, synchronous functions of one transaction and ``now``: what
    jobs_logic.py        each operation reads, decides and writes, and the errors it raises
      Tx, JobTx        the transaction interface the rules are written against
    sqlite_tx.py       one transaction per backend (SQL; Redis hashes and sorted sets, with
    redis_tx.py          WATCH/MULTI/EXEC and savepoints per operation)
    sqlite_engine.py   engines: run the rules in groups, one commit per group, on the loop or a
    redis_engine.py      writer thread, then wake readers (group_commit.py: what both share)
    template.py        RuleStore: every contract method once, as "a rule, run by the engine"
                         (with what it will read named ahead, for Redis) plus the read paths
    sqlite.py          the backends: open/close, the schema, their transaction and engine
    redis.py             plugged into the template, and their own faster reads and caches
                         (Redis: reads from the client, rows it wrote last, pub/sub wake-ups)

A third backend writes a ``JobTx`` and an engine, and a ``RuleStore`` subclass that connects
them (``_change`` runs a rule in a write transaction, ``_view`` a query in a read-only one) and
lists jobs, counts queues and finds a queue's next due time (``_find_jobs``, ``queue_counts``,
``next_due``: queries no rule needs). Every rule, write and read path is inherited; override a
read only to make it faster, and check it against the rules (``tests/store/test_template.py``).
The contract suites (``tests/store/test_contract.py``, ``tests/jobs/test_store_contract.py``)
then run on it unchanged.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from outlast.errors import ConfigError
from outlast.store.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str, *, fsync: bool = False) -> Store:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from outlast.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url, fsync=fsync)
    if scheme in ("redis", "rediss"):
        # Durability is the Redis server's own (appendonly, appendfsync): see docs/redis.md.
        from outlast.store.redis import RedisStore

        return await RedisStore.open(url)
    raise ConfigError(
        f"unsupported store URL {url!r}: use sqlite:///path/outlast.db or redis://host:port/db"
    )
