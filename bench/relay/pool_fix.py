"""``outlast serve`` with the fix proposed for the 1,000-relay failure, for a labelled what-if
figure only (target ``outlast-sqlite-pool-fix``; never a default target):

    python -m bench.relay.pool_fix serve --host 127.0.0.1 --port P --store URL

outlast's shared upstream client is an ``httpx.AsyncClient`` with httpx's default limits, at most
100 connections: relays past the 100th queue in httpcore's pool, whose scheduling is quadratic
in queued requests, and the event loop stalls (bench/README.md, "Relay"). This wrapper gives
every ``httpx.AsyncHTTPTransport`` created without explicit limits unbounded connections (the
client's own ``limits`` do not reach a transport passed in, as outlast's egress-guarded one is),
which is what the proposed change in ``outlast.server.open_node`` does —
``guarded_transport(limits=...)`` — and then runs outlast's CLI.
"""

from __future__ import annotations

from typing import Any

import httpx

# Relays are bounded by the queues' concurrency already; the pool must not bound them again.
UNBOUNDED = httpx.Limits(max_connections=None, max_keepalive_connections=100)
_init = httpx.AsyncHTTPTransport.__init__


def _unbounded_init(self: httpx.AsyncHTTPTransport, *args: Any, **kwargs: Any) -> None:
    kwargs.setdefault("limits", UNBOUNDED)
    _init(self, *args, **kwargs)


def main() -> None:
    httpx.AsyncHTTPTransport.__init__ = _unbounded_init  # type: ignore[method-assign]
    from outlast.cli import main as outlast_main

    outlast_main()


if __name__ == "__main__":
    main()
