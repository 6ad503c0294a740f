"""outlast.Client and outlast.AsyncClient against a real server process (and, for the byte-level
resume rules, against httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import outlast
from outlast import (
    AsyncClient,
    AuthError,
    Client,
    JobEvent,
    JobNotFound,
    Reconnect,
    RequestRejected,
    ServerBusy,
    ServerUnreachable,
)
from outlast.models import JobState
from tests.conftest import ServerProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.cli_app:app"
# Quick reconnects keep the tests short; the give-up time is generous for slow machines.
FAST = Reconnect(initial=0.02, maximum=0.5, give_up_after=60.0)
WAIT = 30.0  # seconds: a guard on every wait, never a pace


def app_env(**extra: str) -> dict[str, str]:
    # PYTHONPATH makes ``tests.cli_app`` importable whatever directory pytest runs from.
    return {"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "0.5", "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def app_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A running server with the test tasks; running jobs get half a second at shutdown."""
    return server_factory(env=app_env(), args=["--app", APP, "--grace", "0.5"]).start()


def signature(events: list[JobEvent]) -> list[tuple[str, str, str]]:
    return [(event.id, event.event, event.data) for event in events]


def outputs(events: list[JobEvent]) -> list[Any]:
    return [event.message["data"] for event in events if event.type == "output"]


class Collector:
    """Iterates a job's events in a thread, as a reader elsewhere would."""

    def __init__(self, iterate: Callable[[], Iterator[JobEvent]]) -> None:
        self.events: list[JobEvent] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(iterate,), daemon=True)
        self.thread.start()

    def _run(self, iterate: Callable[[], Iterator[JobEvent]]) -> None:
        try:
            for event in iterate():
                self.events.append(event)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> list[JobEvent]:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the event iterator did not stop"
        if self.error is not None:
            raise self.error
        return self.events


class DropProxy:
    """A TCP proxy on 127.0.0.1 in front of a server that can cut every connection at once,
    as a restarting load balancer or a flaky network would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.accepted += 1
                self._open += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.drop()


# -- the JSON API ---------------------------------------------------------------------------


def test_submit_get_wait_cancel_and_errors(app_server: ServerProcess, tmp_path: Path) -> None:
    with Client(app_server.url, reconnect=FAST) as client:
        job = client.submit("echo", {"word": "hi"})
        assert job.id.startswith("job_")
        assert job.task == "echo" and job.queue == "default"
        assert job.state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
        assert job.events_url == f"/v1/jobs/{job.id}/events"

        done = client.wait(job.id, timeout=WAIT)
        assert done.state == JobState.SUCCEEDED and done.terminal
        assert done.result == {"word": "hi"}
        assert done.created_at is not None and done.finished_at is not None
        assert done.raw["result"] == {"word": "hi"}
        assert client.get(job.id, wait=5).state == JobState.SUCCEEDED

        # An idempotency key gives back the same job.
        first = client.submit("echo", {"n": 1}, key="same-key")
        again = client.submit("echo", {"n": 1}, key="same-key")
        assert again.id == first.id
        with pytest.raises(RequestRejected) as conflict:
            client.submit("echo", {"n": 2}, key="same-key")
        assert conflict.value.status == 409

        # Cancel a running job; a second cancel and a cancel of a finished job change nothing.
        blocked = client.submit("block", {"gate": str(tmp_path / "never")})
        wait_for(lambda: client.get(blocked.id).state == JobState.RUNNING, timeout=WAIT)
        client.cancel(blocked.id)
        cancelled = client.wait(blocked.id, timeout=WAIT)
        assert cancelled.state == JobState.CANCELLED
        assert client.cancel(blocked.id).state == JobState.CANCELLED
        assert client.cancel(job.id).state == JobState.SUCCEEDED

        # Errors arrive as exceptions with the server's code, message and field.
        with pytest.raises(RequestRejected) as unknown:
            client.submit("no-such-task")
        assert (unknown.value.status, unknown.value.code) == (422, "unknown_task")
        assert unknown.value.field == "task"
        assert "no-such-task" in unknown.value.message
        with pytest.raises(RequestRejected) as bad_input:
            client.submit("count", {"n": 1, "unexpected": True})
        assert bad_input.value.field == "input"
        missing = "job_" + "a" * 29
        with pytest.raises(JobNotFound):
            client.get(missing)
        with pytest.raises(JobNotFound):
            client.cancel(missing)
        with pytest.raises(JobNotFound):
            next(iter(client.events(missing)))
        # An id that is not one cannot reach another route.
        with pytest.raises(JobNotFound):
            client.get("../../healthz")


def test_list_pages_and_filters(app_server: ServerProcess) -> None:
    with Client(app_server.url) as client:
        made = [client.submit("echo", {"i": i}).id for i in range(5)]
        client.submit("count", {"n": 0})
        for job_id in made:
            assert client.wait(job_id, timeout=WAIT).terminal

        pages, cursor = [], None
        while True:
            page = client.list(task="echo", limit=2, cursor=cursor)
            pages.append([job.id for job in page.jobs])
            if page.next is None:
                break
            cursor = page.next
        assert [len(ids) for ids in pages] == [2, 2, 1]
        listed = [job_id for ids in pages for job_id in ids]
        assert sorted(listed) == sorted(made)
        every = list(client.iter_jobs(task="echo", page_size=2))
        assert [job.id for job in every] == listed
        created = [job.raw["created_at"] for job in every]  # RFC 3339 UTC: sorts as text
        assert created == sorted(created, reverse=True)  # newest first
        assert {job.task for job in client.iter_jobs(page_size=4)} == {"echo", "count"}
        succeeded = list(client.iter_jobs(state=JobState.SUCCEEDED, task="echo"))
        assert len(succeeded) == 5
        assert client.list(state="failed").jobs == []
        with pytest.raises(RequestRejected) as bad:
            client.list(limit=0)
        assert bad.value.field == "limit"


def test_async_client(app_server: ServerProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(app_server.url, reconnect=FAST) as client:
            job = await client.submit("count", {"n": 3})
            events = [event async for event in client.events(job.id)]
            assert outputs(events) == [{"i": 0}, {"i": 1}, {"i": 2}]
            assert events[-1].ends_job and events[-1].message["state"] == "succeeded"
            done = await client.wait(job.id, timeout=WAIT)
            assert done.result == {"n": 3}
            # Resuming after the third event yields exactly the rest.
            rest = [event async for event in client.events(job.id, offset=events[2].id)]
            assert signature(rest) == signature(events[3:])
            assert [event async for event in client.events(job.id, offset=events[-1].id)] == []

            blocked = await client.submit("block", {"gate": str(tmp_path / "never")})
            await client.cancel(blocked.id)
            assert (await client.wait(blocked.id, timeout=WAIT)).state == JobState.CANCELLED

            page = await client.list(limit=1)
            assert len(page.jobs) == 1 and page.next is not None
            every = [found async for found in client.iter_jobs(page_size=1)]
            assert sorted(found.id for found in every) == sorted([job.id, blocked.id])
            assert every[0].id == page.jobs[0].id
            with pytest.raises(JobNotFound):
                await client.get("job_" + "b" * 29)
            with pytest.raises(RequestRejected):
                await client.submit("count", {"n": "many", "extra": 1})

    asyncio.run(scenario())


def test_queue_full_is_server_busy(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(
        env=app_env(OUTLAST_QUEUES__DEFAULT__CAPACITY="1"), args=["--app", APP]
    ).start()
    with Client(server.url) as client:
        client.submit("echo", delay=3600)  # waits an hour: it holds the only place
        with pytest.raises(ServerBusy) as busy:
            client.submit("echo", delay=3600)
        assert busy.value.status == 429 and busy.value.code == "queue_full"
        assert busy.value.retry_after is not None and busy.value.retry_after > 0


def test_bearer_token(server_factory: Callable[..., ServerProcess]) -> None:
    token = "client-test-token"
    tokens = [
        {
            "name": "tests",
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "scopes": ["jobs:write", "jobs:read"],
        }
    ]
    server = server_factory(
        env=app_env(OUTLAST_AUTH__TOKENS=json.dumps(tokens)), args=["--app", APP]
    ).start()
    with Client(server.url) as anonymous, pytest.raises(AuthError) as refused:
        anonymous.submit("echo")
    assert refused.value.status == 401
    with Client(server.url, token="wrong") as wrong, pytest.raises(AuthError):
        wrong.list()
    with Client(server.url, token=token) as client:
        job = client.submit("count", {"n": 2})
        assert outputs(list(client.events(job.id))) == [{"i": 0}, {"i": 1}]


def test_unreachable_server_and_bad_url() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(ServerUnreachable):
        client.list()
    with pytest.raises(outlast.ClientError):
        Client("127.0.0.1:8787")


# -- the event iterator against a real server -------------------------------------------------


def test_events_from_start_and_from_an_offset(app_server: ServerProcess) -> None:
    with Client(app_server.url) as client:
        job = client.submit("count", {"n": 3})
        events = list(client.events(job.id))
        assert [event.type for event in events] == [
            "state",
            "state",
            "output",
            "output",
            "output",
            "result",
            "state",
        ]
        assert [e.message.get("state") for e in events if e.type == "state"] == [
            "queued",
            "running",
            "succeeded",
        ]
        assert events[5].message["result"] == {"n": 3}
        assert [event.event for event in events][2] == "outlast.output"
        ids = [event.id for event in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for cut in range(len(events)):
            rest = list(client.events(job.id, offset=events[cut].id))
            assert signature(rest) == signature(events[cut + 1 :])


def test_events_resume_after_a_dropped_connection(
    app_server: ServerProcess, tmp_path: Path
) -> None:
    """The connection is cut mid-job (twice); the async iterator resumes from its last id."""
    gate = tmp_path / "gate"
    proxy = DropProxy(app_server.port)
    try:
        with Client(app_server.url) as client:
            job = client.submit("steps", {"gate": str(gate), "n": 3})

        def iterate() -> Iterator[JobEvent]:
            # The async iterator, driven from its own event loop in the collector's thread.
            async def collect() -> list[JobEvent]:
                async with AsyncClient(proxy.url, reconnect=FAST) as remote:
                    return [event async for event in remote.events(job.id)]

            return iter(asyncio.run(collect()))

        # Collect live from a sync iterator too, so both iterators cross the same cuts.
        with Client(proxy.url, reconnect=FAST) as remote:
            live = Collector(lambda: remote.events(job.id))
            buffered = Collector(iterate)
            wait_for(lambda: len(outputs(live.events)) >= 3, timeout=WAIT)
            wait_for(lambda: proxy.accepted >= 2, timeout=WAIT)  # both are reading
            proxy.drop()
            wait_for(lambda: proxy.accepted >= 4, timeout=WAIT)  # both came back
            proxy.drop()
            gate.touch()
            got_sync = live.finish()
            got_async = buffered.finish()

        with Client(app_server.url) as client:
            assert client.get(job.id).state == JobState.SUCCEEDED
            full = list(client.events(job.id))
        assert outputs(full) == [{"step": i, "attempt": 1} for i in range(6)]
        assert signature(got_sync) == signature(full)
        assert signature(got_async) == signature(full)
        assert proxy.accepted >= 6
    finally:
        proxy.close()


def test_events_resume_across_a_server_restart(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """SIGTERM while a reader follows a running job, then a new server on the same store and
    port: the reader carries on where it was, and sees the handed-back job run again."""
    gate = tmp_path / "gate"
    server = server_factory(env=app_env(), args=["--app", APP, "--grace", "0.5"]).start()
    with Client(server.url, reconnect=FAST) as client:
        job = client.submit("steps", {"gate": str(gate), "n": 3})
        reader = Collector(lambda: client.events(job.id))
        wait_for(lambda: len(outputs(reader.events)) >= 3, timeout=WAIT)
        before_restart = len(reader.events)

        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        server.start()
        gate.touch()
        got = reader.finish()

        assert client.wait(job.id, timeout=WAIT).state == JobState.SUCCEEDED
        full = list(client.events(job.id))
    assert len(got) > before_restart
    assert signature(got) == signature(full)
    assert got[-1].ends_job
    # Whatever the restart did to the job, its last attempt ran all six steps, in order.
    steps = [data["step"] for data in outputs(full)]
    assert steps[-6:] == list(range(6))


# -- the resume rules, byte by byte (httpx.MockTransport) -------------------------------------

EVENTS = [
    b'event: outlast.state\ndata: {"type":"state","state":"running","attempt":1}\nid: 0_10\n\n',
    b'event: outlast.output\ndata: {"type":"output","data":"a"}\nid: 0_20\n\n',
    b'event: outlast.output\ndata: {"type":"output","data":"b"}\nid: 0_30\n\n',
    b'event: outlast.state\ndata: {"type":"state","state":"succeeded","attempt":1}\nid: 0_40\n\n',
]
SSE = {"content-type": "text/event-stream"}


class ScriptedServer:
    """Answers each connection from a script and records the Last-Event-ID it was sent."""

    def __init__(self, script: list[Callable[[], httpx.Response]]) -> None:
        self.script = script
        self.resumed_from: list[str | None] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.resumed_from.append(request.headers.get("last-event-id"))
        return self.script[len(self.resumed_from) - 1]()


def cut_after(*chunks: bytes) -> Callable[[], httpx.Response]:
    """A 200 that sends *chunks*, then loses its connection."""

    def body() -> Iterator[bytes]:
        yield from chunks
        raise httpx.ReadError("connection reset by peer")

    async def abody() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        raise httpx.ReadError("connection reset by peer")

    return lambda: httpx.Response(200, headers=SSE, stream=_Both(body, abody))


class _Both(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that either client can read."""

    def __init__(
        self, sync: Callable[[], Iterator[bytes]], async_: Callable[[], AsyncIterator[bytes]]
    ) -> None:
        self.sync, self.async_ = sync, async_

    def __iter__(self) -> Iterator[bytes]:
        return self.sync()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.async_()


def ends(*chunks: bytes) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(200, headers=SSE, content=b"".join(chunks))


def run_both(script: Callable[[], list[Callable[[], httpx.Response]]]) -> list[ScriptedServer]:
    """The same script against the sync and the async iterator; both must agree."""
    results: list[tuple[list[JobEvent], ScriptedServer]] = []
    server = ScriptedServer(script())
    with Client("http://outlast.test", transport=httpx.MockTransport(server.handle)) as c:
        c.reconnect = Reconnect(initial=0.0, maximum=0.0, give_up_after=60.0)
        results.append((list(c.events("job_x")), server))

    async def collect() -> list[JobEvent]:
        transport = httpx.MockTransport(aserver.handle)
        async with AsyncClient("http://outlast.test", transport=transport) as ac:
            ac.reconnect = Reconnect(initial=0.0, maximum=0.0, give_up_after=60.0)
            return [event async for event in ac.events("job_x")]

    aserver = ScriptedServer(script())
    results.append((asyncio.run(collect()), aserver))
    for events, _ in results:
        assert [event.id for event in events] == ["0_10", "0_20", "0_30", "0_40"]
        assert [event.message.get("data") for event in events][1:3] == ["a", "b"]
    return [server for _, server in results]


def test_a_cut_in_the_middle_of_an_event_repeats_nothing() -> None:
    half = EVENTS[2][:30]
    servers = run_both(lambda: [cut_after(EVENTS[0], EVENTS[1], half), ends(EVENTS[2], EVENTS[3])])
    for server in servers:
        assert server.resumed_from == [None, "0_20"]


def test_busy_and_clean_early_ends_are_retried_and_204_stops() -> None:
    def script() -> list[Callable[[], httpx.Response]]:
        draining = httpx.Response(
            503,
            headers={"retry-after": "0"},
            json={"error": {"code": "draining", "message": "shutting down"}},
        )
        return [
            lambda: draining,
            cut_after(),  # connection lost before anything arrived
            ends(EVENTS[0]),  # the server ended the response early (it is draining)
            ends(EVENTS[1], EVENTS[2], EVENTS[3]),
        ]

    for server in run_both(script):
        assert server.resumed_from == [None, None, None, "0_10"]

    # After the terminal state the iterator stops without asking again; a 204 stops it too.
    server = ScriptedServer([lambda: httpx.Response(204)])
    with Client("http://outlast.test", transport=httpx.MockTransport(server.handle)) as c:
        assert list(c.events("job_x", offset="0_40")) == []
    assert server.resumed_from == ["0_40"]


def test_the_iterator_gives_up_and_reports_errors() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    give_up = Reconnect(initial=0.0, maximum=0.0, give_up_after=0.0)
    with (
        Client(
            "http://outlast.test", transport=httpx.MockTransport(refused), reconnect=give_up
        ) as c,
        pytest.raises(ServerUnreachable, match="connection refused"),
    ):
        list(c.events("job_x"))

    def not_found(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "job_not_found", "message": "job not found"}}
        return httpx.Response(404, json=body)

    with Client("http://outlast.test", transport=httpx.MockTransport(not_found)) as c:
        with pytest.raises(JobNotFound) as missing:
            list(c.events("job_x"))
        assert missing.value.code == "job_not_found"

    def not_sse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>a proxy page</html>")

    with Client("http://outlast.test", transport=httpx.MockTransport(not_sse)) as c:
        with pytest.raises(outlast.InvalidResponse):
            list(c.events("job_x"))
        with pytest.raises(outlast.InvalidResponse):
            c.list()


def test_submit_with_a_callback_and_verify_what_arrives(
    server_factory: Callable[..., ServerProcess],
) -> None:
    from outlast.errors import OutlastError, WebhookVerificationError
    from outlast.webhooks import verify
    from tests.fakes.receiver import SECRET, Receiver, hook_env

    receiver = Receiver().start()
    try:
        server = server_factory(env=app_env(**hook_env()), args=["--app", APP]).start()
        with Client(server.url) as client:
            events = ["job.succeeded"]
            job = client.submit("echo", {"a": 1}, callback={"url": receiver.url, "events": events})
            assert job.raw["callback"]["events"] == events
            wait_for(receiver.requests, timeout=WAIT)
        [request] = receiver.requests()
        verify(request.body, request.headers, SECRET)  # Python receivers: no exception
        verify(request.body.decode(), {k.upper(): v for k, v in request.headers.items()}, SECRET)
        event = json.loads(request.body)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job.id
        tampered = request.body.replace(b'"a":1', b'"a":2')
        other = "whsec_" + "b3RoZXIgc2VjcmV0"
        stale = int(request.headers["webhook-timestamp"]) + 3600
        for body, headers, secret, now in [
            (tampered, request.headers, SECRET, None),
            (request.body, request.headers, other, None),
            (request.body, request.headers, SECRET, stale),
            (request.body, {"webhook-id": request.webhook_id}, SECRET, None),
        ]:
            with pytest.raises(WebhookVerificationError):
                verify(body, headers, secret, now=now)
        assert issubclass(WebhookVerificationError, OutlastError)
    finally:
        receiver.stop()
