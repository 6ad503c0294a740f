"""Egress rules without a server: which addresses are refused, and the check at connect time
inside the HTTP client (what stops a name that resolves to a public address when the job is
submitted and to 127.0.0.1 when it runs)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpcore
import httpx
import pytest

from outlast.config import EgressSettings
from outlast.egress import (
    EgressRefused,
    LeanStream,
    Target,
    check_url,
    egress_scope,
    guarded_transport,
    is_private,
    refusal,
    resolve_and_check,
)
from outlast.errors import Forbidden, Unprocessable

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.8",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.10.10",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "ff02::1",
]
PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1"]
METADATA = ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"]


@pytest.mark.parametrize("addr", PRIVATE + METADATA)
def test_private_addresses(addr: str) -> None:
    assert is_private(ipaddress.ip_address(addr))
    assert refusal(ipaddress.ip_address(addr), allow_private=False) is not None


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses(addr: str) -> None:
    assert not is_private(ipaddress.ip_address(addr))
    assert refusal(ipaddress.ip_address(addr), allow_private=False) is None


@pytest.mark.parametrize("addr", METADATA)
def test_metadata_is_refused_even_where_private_addresses_are_allowed(addr: str) -> None:
    why = refusal(ipaddress.ip_address(addr), allow_private=True)
    assert why is not None and "metadata" in why


def test_private_addresses_may_be_allowed() -> None:
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "2130706433", "127.1"])
def test_names_and_spellings_of_loopback_are_refused_after_resolution(host: str) -> None:
    target = check_url(f"http://{host}:9/x", EgressSettings(allowed_hosts=["*"]))
    with pytest.raises(Forbidden, match="private or local"):
        asyncio.run(resolve_and_check(target))


def test_the_allow_list_comes_first() -> None:
    egress = EgressSettings(allowed_hosts=["api.example.com", "*.example.org"])
    assert check_url("https://api.example.com/v1", egress).host == "api.example.com"
    assert check_url("https://a.b.example.org/v1", egress).host == "a.b.example.org"
    for url in ("https://example.org/", "https://evil.com/", "https://api.example.com.evil.com/"):
        with pytest.raises(Forbidden, match="allowed_hosts"):
            check_url(url, egress)
    for url in ("ftp://api.example.com/", "/relative", "http://api.example.com:99999/"):
        with pytest.raises(Unprocessable):
            check_url(url, egress)


async def _get(url: str, target: Target | None) -> int:
    async with httpx.AsyncClient(transport=guarded_transport()) as client:
        if target is None:
            return (await client.get(url)).status_code
        with egress_scope(target):
            return (await client.get(url)).status_code


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_client_refuses_at_connect_time(upstream: Any, host: str) -> None:
    url = f"http://{host}:{upstream.port}/echo"
    strict = Target(url, host, allow_private=False)
    with pytest.raises(EgressRefused, match="private or local"):
        asyncio.run(_get(url, strict))
    assert upstream.requests["/echo"] == 0  # never connected


def test_the_client_connects_where_allowed(upstream: Any) -> None:
    url = f"http://localhost:{upstream.port}/echo"
    assert asyncio.run(_get(url, Target(url, "localhost", allow_private=True))) == 200
    # outlast's own requests (no scope) are not restricted to public addresses.
    assert asyncio.run(_get(url, None)) == 200
    assert upstream.requests["/echo"] == 2


def test_reads_without_a_timeout_skip_the_timeout_scope_and_map_errors_alike() -> None:
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            inner = await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", port)
            stream = LeanStream(inner)
            assert stream.raw is not None  # the direct path is taken on httpcore's anyio stream
            received = b""
            while len(received) < 5:
                chunk = await stream.read(1024)
                assert chunk
                received += chunk
            assert received == b"hello"
            assert await stream.read(1024) == b""  # the peer closed: end of stream, as httpcore
            assert await stream.read(1024, timeout=1.0) == b""  # httpcore's own path
            await stream.aclose()
            with pytest.raises(httpcore.ReadError):
                await stream.read(1024)

    asyncio.run(main())
