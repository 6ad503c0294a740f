"""The floor of an append over Python HTTP: uvicorn (httptools, uvloop) and an ASGI app that
reads the body and answers as outlast does (``204`` with ``Stream-Next-Offset``), storing
nothing. What outlast spends per append beyond this is outlast's own work.

    python -m uvicorn bench.streams.floor_app:app --http httptools --loop uvloop
"""

from __future__ import annotations

from typing import Any

OFFSET = b"0000000000000000_0000000000000000"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    # PUT (the harness creates its streams first) is a 201, any other method the append's 204.
    status = 201 if scope["method"] == "PUT" else 204
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"stream-next-offset", OFFSET)],
        }
    )
    await send({"type": "http.response.body", "body": b""})
