"""How the load generator talks to each target: enqueue one job, and count the jobs not finished.

Each target is enqueued the way its users enqueue it, with its own client library:

- ``outlast``   ``POST /v1/jobs`` with aiohttp (keep-alive connections, one per producer task)
- ``celery``    ``task.apply_async(kwargs=...)`` (kombu publishes to the ``celery`` list)
- ``dramatiq``  ``actor.send(**kwargs)``
- ``rq``        ``Queue("default").enqueue(func, **kwargs)``
- ``arq``       ``await pool.enqueue_job(name, **kwargs)`` (``arq.create_pool``)

Batches (the ``enqueue_batch`` workload) go through each library's own way of sending many jobs
at once: outlast ``POST /v1/jobs/batch``; RQ ``Queue.enqueue_many`` (one Redis pipeline); Celery
``group(...).apply_async()`` and Dramatiq ``group(...).run()`` (the jobs of the group published
one after another); arq has none, so its batch is ``enqueue_job`` calls one after another.

Sync libraries are driven from threads, async ones from asyncio tasks (``loadgen.py`` does that).
"Not finished" is read from Redis for the peers (each peer keeps a job somewhere until it ran)
and from ``GET /v1/queues`` for outlast; ``None`` means "cannot tell yet" (server starting).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio

QUEUE = "default"


KEYS = 100  # distinct concurrency keys of the noop_keys workload


class EnqueueError(Exception):
    """The target refused a job (outlast answered something other than 202)."""


class Client:
    """One target as the load generator sees it. Subclasses set ``sync`` and implement
    ``enqueue_sync`` (called from threads) or ``enqueue`` (awaited on the event loop)."""

    sync = False

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.redis: Any = None

    async def open(self) -> None:
        self.redis = redis.asyncio.Redis.from_url(self.spec["broker_url"])

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    def enqueue_sync(self, task: str, kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    async def enqueue(self, task: str, kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    def enqueue_batch_sync(self, task: str, count: int) -> None:
        """*count* jobs of *task* (no input) at once."""
        raise NotImplementedError

    async def enqueue_batch(self, task: str, count: int) -> None:
        raise NotImplementedError

    async def remaining(self, expected: int) -> int | None:
        """Jobs enqueued (*expected* in all since the target's Redis db was emptied) that have
        not finished running."""
        raise NotImplementedError


class OutlastClient(Client):
    async def open(self) -> None:
        await super().open()
        # One keep-alive connection per producer: the client should never be what limits.
        connector = aiohttp.TCPConnector(limit=self.spec["producers"] + 2, force_close=False)
        self.session = aiohttp.ClientSession(connector=connector)
        self.url = f"{self.spec['base']}/v1/jobs"
        self.batch_url = f"{self.spec['base']}/v1/jobs/batch"
        self.sequence = itertools.count()

    async def close(self) -> None:
        await self.session.close()
        await super().close()

    async def enqueue(self, task: str, kwargs: dict[str, Any]) -> None:
        body: dict[str, Any] = {"task": task}
        if task == "noop_keys":
            # No-op jobs over KEYS concurrency keys, with priorities -10, 0 and 10 in turn.
            n = next(self.sequence)
            body = {"task": "noop", "concurrency_key": f"k{n % KEYS}", "priority": n % 3 * 10 - 10}
        if kwargs:
            body["input"] = kwargs
        async with self.session.post(
            self.url, data=json.dumps(body), headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.read()
            if resp.status != 202:
                raise EnqueueError(f"{resp.status} {text[:200].decode(errors='replace')}")

    async def enqueue_batch(self, task: str, count: int) -> None:
        body = json.dumps({"jobs": [{"task": task}] * count})
        async with self.session.post(
            self.batch_url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.read()
            if resp.status != 200:
                raise EnqueueError(f"{resp.status} {text[:200].decode(errors='replace')}")
            refused = [a for a in json.loads(text)["jobs"] if a["status"] != 202]
            if refused:
                raise EnqueueError(f"{len(refused)} of {count} refused: {refused[0]}"[:300])

    async def remaining(self, expected: int) -> int | None:
        try:
            async with self.session.get(f"{self.spec['base']}/v1/queues") as resp:
                if resp.status != 200:
                    return None
                data = await resp.json()
        except aiohttp.ClientError:
            return None  # still starting
        for queue in data["queues"]:
            if queue["name"] == QUEUE:
                return int(queue["queued"]) + int(queue["running"])
        return None


class CeleryClient(Client):
    sync = True

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from bench.jobs import celery_tasks

        self.tasks = celery_tasks.app.tasks
        self.keys = (celery_tasks.QUEUE_KEY, celery_tasks.UNACKED_KEY)

    def enqueue_sync(self, task: str, kwargs: dict[str, Any]) -> None:
        self.tasks[task].apply_async(kwargs=kwargs)

    def enqueue_batch_sync(self, task: str, count: int) -> None:
        from celery import group

        group(self.tasks[task].s() for _ in range(count)).apply_async()

    async def remaining(self, expected: int) -> int:
        # Waiting in the list, or delivered to the worker and not yet acknowledged (acks_late:
        # a message is acknowledged after its task ran).
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys[0])
            pipe.hlen(self.keys[1])
            waiting, unacked = await pipe.execute()
        return int(waiting) + int(unacked)


class DramatiqClient(Client):
    sync = True

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        from bench.jobs import dramatiq_tasks

        self.actors: dict[str, Any] = {
            "noop": dramatiq_tasks.noop,
            "sleep10": dramatiq_tasks.sleep10,
            "mark": dramatiq_tasks.mark,
        }
        self.key = dramatiq_tasks.MESSAGES_KEY

    def enqueue_sync(self, task: str, kwargs: dict[str, Any]) -> None:
        self.actors[task].send(**kwargs)

    def enqueue_batch_sync(self, task: str, count: int) -> None:
        import dramatiq

        dramatiq.group([self.actors[task].message() for _ in range(count)]).run()

    async def remaining(self, expected: int) -> int:
        return int(await self.redis.hlen(self.key))


class RQClient(Client):
    sync = True

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        import redis as sync_redis
        from bench.jobs import rq_tasks
        from rq import Queue

        self.queue = Queue(QUEUE, connection=sync_redis.Redis.from_url(spec["broker_url"]))
        self.funcs: dict[str, Callable[..., None]] = {
            "noop": rq_tasks.noop,
            "sleep10": rq_tasks.sleep10,
            "mark": rq_tasks.mark,
        }
        self.keys = (rq_tasks.FINISHED_KEY, rq_tasks.FAILED_KEY)

    def enqueue_sync(self, task: str, kwargs: dict[str, Any]) -> None:
        self.queue.enqueue(self.funcs[task], **kwargs)

    def enqueue_batch_sync(self, task: str, count: int) -> None:
        from rq import Queue

        func = self.funcs[task]
        self.queue.enqueue_many([Queue.prepare_data(func) for _ in range(count)])

    async def remaining(self, expected: int) -> int:
        # RQ keeps finished jobs in a registry (result_ttl, 500 s by default): what is neither
        # finished nor failed is still queued or running.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys[0])
            pipe.zcard(self.keys[1])
            finished, failed = await pipe.execute()
        return max(0, expected - int(finished) - int(failed))


class ArqClient(Client):
    async def open(self) -> None:
        await super().open()
        from arq import create_pool
        from arq.connections import RedisSettings
        from bench.jobs import arq_tasks

        self.pool = await create_pool(RedisSettings.from_dsn(self.spec["broker_url"]))
        self.key = arq_tasks.QUEUE_KEY

    async def close(self) -> None:
        await self.pool.aclose()
        await super().close()

    async def enqueue(self, task: str, kwargs: dict[str, Any]) -> None:
        await self.pool.enqueue_job(task, **kwargs)

    async def enqueue_batch(self, task: str, count: int) -> None:
        # arq has no batch form: the jobs one after another (each an enqueue_job round trip;
        # made concurrently, 16 producers' batches exhaust the pool's connections).
        for _ in range(count):
            await self.pool.enqueue_job(task)

    async def remaining(self, expected: int) -> int:
        # A job id leaves arq's queue (a sorted set) when its job has finished.
        return int(await self.redis.zcard(self.key))


CLIENTS: dict[str, type[Client]] = {
    "outlast": OutlastClient,
    "celery": CeleryClient,
    "dramatiq": DramatiqClient,
    "rq": RQClient,
    "arq": ArqClient,
}
