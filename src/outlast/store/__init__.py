"""Stores, chosen by URL scheme and imported lazily: ``sqlite:///path`` or ``redis://host:port/db``."""

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
