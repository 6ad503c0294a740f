"""The test double of docs/cli.md ("Testing code that uses the client"): an
``httpx.MockTransport`` answers for the server. ``python examples/client_testing.py``."""

import httpx, outlast

def handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(202, json={"id": "job_…", "task": "t", "queue": "default",
                                     "state": "queued"})

client = outlast.Client("http://outlast.test", transport=httpx.MockTransport(handler))
assert client.submit("t").state == "queued"
print("ok")
