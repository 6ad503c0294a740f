"""Opening a Redis store: its URL, and the checks made of the server at start."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from outlast.errors import ConfigError, StoreError
from outlast.store.versions import REDIS_LAYOUT_VERSION, too_new

log = logging.getLogger("outlast.store.redis")

DEFAULT_PREFIX = "outlast:"
MIN_VERSION = (6, 2)
CONNECT_TIMEOUT = 2.0
# A command that takes longer than this means Redis is in trouble: answer 503 rather than hang.
COMMAND_TIMEOUT = 5.0


@dataclass(frozen=True)
class RedisURL:
    params: dict[str, Any]  # for redis-py connections (each adds its own kind of retry policy)
    prefix: str
    display: str  # without the password


def parse_url(url: str) -> RedisURL:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"not a redis URL: {url!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise ConfigError(f"unknown parameter {unknown[0]!r} in store URL (known: prefix)")
    prefix = query.get("prefix", [DEFAULT_PREFIX])[0]
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ConfigError(f"the redis database in the store URL must be a number: {url!r}")
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"bad port in store URL {url!r}") from exc
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "db": int(path),
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "protocol": 2,  # the replies the engine parses (redis-py 8 defaults to RESP3)
    }
    if parts.username:
        params["username"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    display = f"{parts.scheme}://{params['host']}:{port}/{params['db']}"
    return RedisURL(params, prefix, display)


def check_version(info: dict[str, Any], where: str) -> None:
    raw = str(info.get("redis_version", "0"))
    version = tuple(int(p) for p in raw.split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        raise StoreError(
            f"redis at {where} is version {raw}; "
            f"outlast needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or later"
        )


async def check_durability(client: aioredis.Redis, where: str) -> None:
    """Warn when Redis could lose writes outlast has acknowledged (see docs/redis.md)."""
    try:
        config = await client.config_get("appendonly")
        config.update(await client.config_get("appendfsync"))
        config.update(await client.config_get("maxmemory-policy"))
    except RedisError as exc:
        log.warning(
            "cannot read the persistence settings of redis at %s (%s): make sure it runs with "
            "appendonly yes and appendfsync always (docs/redis.md)",
            where,
            exc,
        )
        return
    settings = {text(k): text(v) for k, v in config.items()}
    appendonly = settings.get("appendonly")
    fsync = settings.get("appendfsync")
    policy = settings.get("maxmemory-policy")
    if appendonly != "yes":
        log.warning(
            "redis at %s runs without AOF (appendonly %s): a Redis restart loses acknowledged "
            "jobs and stream data. Set appendonly yes and appendfsync always (docs/redis.md)",
            where,
            appendonly,
        )
    elif fsync != "always":
        at_risk = (
            "about the last second" if fsync == "everysec" else "what the OS had not yet written"
        )
        log.warning(
            "redis at %s syncs its AOF with appendfsync %s: a crash of Redis or its machine can "
            "lose %s of acknowledged writes. Set appendfsync always for "
            "'acknowledged means durable' (docs/redis.md)",
            where,
            fsync,
            at_risk,
        )
    if policy is not None and policy != "noeviction":
        log.warning(
            "redis at %s evicts keys under memory pressure (maxmemory-policy %s): outlast's data "
            "could silently disappear. Set maxmemory-policy noeviction (docs/redis.md)",
            where,
            policy,
        )


async def check_layout(client: aioredis.Redis, prefix: str, where: str) -> int:
    """Record the layout version under *prefix*, or check the one recorded; return what was
    found (keys written before versions were recorded have today's layout, version 1)."""
    key = prefix + "layout_version"
    try:
        await client.set(key, REDIS_LAYOUT_VERSION, nx=True)
        raw = await client.get(key)
    except RedisError as exc:
        raise StoreError(f"cannot read the layout version of redis at {where}: {exc}") from exc
    try:
        found = int(text(raw))
    except (TypeError, ValueError):
        raise StoreError(f"redis at {where} holds a malformed {key}: {raw!r}") from None
    if found > REDIS_LAYOUT_VERSION:
        what = f"the redis store at {where} (prefix {prefix!r})"
        raise too_new(what, "layout", found, REDIS_LAYOUT_VERSION)
    # An older layout would be migrated here, then the key raised: none exists yet.
    return found


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
