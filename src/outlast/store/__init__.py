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
    raise ConfigError(f"unsupported store URL {url!r}: use sqlite:///path/outlast.db")
