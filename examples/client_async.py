"""The ``AsyncClient`` example of docs/cli.md: ``python examples/client_async.py`` against
``outlast serve --app examples.myapp:app``."""

import asyncio

import outlast


async def main() -> None:
    async with outlast.AsyncClient() as client:
        job = await client.submit("count", {"n": 3})
        async for event in client.events(job.id):
            print(event.type, event.data)


asyncio.run(main())
