"""Stream cursors for CDN collapsing (protocol §8.1).

Time is cut into fixed intervals counted from a fixed epoch; a cursor is the interval number. A
client that echoes a cursor at or past the current interval gets a strictly larger one (with
random jitter), so cursors never go backwards and cached empty answers cannot loop forever.
"""

from __future__ import annotations

import random
import time

from outlast.boundary import whole_number

EPOCH = 1728432000.0  # 2024-10-09T00:00:00Z, the protocol's default
INTERVAL = 20.0  # seconds
JITTER_SECONDS = (1, 3600)


def current_interval(now: float | None = None) -> int:
    return int(((time.time() if now is None else now) - EPOCH) // INTERVAL)


def next_cursor(client_cursor: str | None, now: float | None = None) -> str:
    interval = current_interval(now)
    echoed = None if client_cursor is None else whole_number(client_cursor)
    if echoed is not None and echoed >= interval:
        jitter = random.randint(*JITTER_SECONDS)
        return str(echoed + max(1, int(jitter // INTERVAL)))
    return str(interval)
