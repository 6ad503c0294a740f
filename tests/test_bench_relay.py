"""The relay benchmark's fake upstream: what a stream is to do reaches it through a proxy that
passes on only the OpenAI fields (LiteLLM), and its stamps survive a proxy that rebuilds chunks."""

from __future__ import annotations

import json

from bench.relay.upstream import EVENT, EVENT_IN_CONTENT, STAMP, bench_params


def test_params_come_from_the_body_or_else_from_the_last_message() -> None:
    params = {"gate": "g-1", "n": 3, "rate": 10.0}
    assert bench_params(json.dumps({"bench": params, "messages": []}).encode()) == params
    in_message = {
        "model": "bench",
        "messages": [
            {"role": "system", "content": "hi"},
            {"role": "user", "content": json.dumps({"bench": params})},
        ],
    }
    assert bench_params(json.dumps(in_message).encode()) == params


def test_requests_without_params_get_the_defaults() -> None:
    for body in (b"", b"not json", b"[]", b'{"messages": [{"role": "user", "content": "Count."}]}'):
        assert bench_params(body) == {}
    assert bench_params(b'{"messages": [{"role": "user", "content": "{\\"x\\": 1}"}]}') == {}


def test_the_stamp_is_found_in_either_place() -> None:
    plain = EVENT % (7, 7, 123456789)
    match = STAMP.search(plain)
    assert match is not None and (match[1], match[2]) == (b"7", b"123456789")
    # Rebuilt the way LiteLLM rebuilds a chunk: only the OpenAI fields, the content kept.
    chunk = json.loads((EVENT_IN_CONTENT % (7, 7, 123456789))[len(b"data: ") :])
    rebuilt = json.dumps(
        {"id": chunk["id"], "choices": [{"index": 0, "delta": chunk["choices"][0]["delta"]}]}
    ).encode()
    match = STAMP.search(rebuilt)
    assert match is not None and (match[3], match[4]) == (b"7", b"123456789")
