"""What a relayed stream holds so far (:class:`Progress`), so that a retry continues instead of
repeating, and the OpenAI-style stream format the relay reads: chunks with ``choices``, a
``finish_reason``, ``data: [DONE]`` and the ``usage`` counts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from outlast.follow import Follow
from outlast.models import job_stream_name
from outlast.sse import SSEEvent
from outlast.store.base import Store
from outlast.tasks import Job


@dataclass
class Progress:
    """What the job's stream holds so far, so that a retry continues instead of repeating."""

    events: int = 0
    last_id: str | None = None
    done: bool = False
    text_parts: list[str] = field(default_factory=list)
    saw_chat_chunks: bool = False
    usage: dict[str, int] | None = None
    openai_style: bool = False  # chunks with ``choices``: such a stream says when it is over
    finished: bool = False  # a ``finish_reason`` was given

    def add(self, event: SSEEvent) -> None:
        self.events += 1
        if event.id is not None:
            # An empty id resets it, as for EventSource: nothing to resume from then.
            self.last_id = event.id or None
        data = event.data
        if data.strip() == "[DONE]":
            self.done = True
            return
        if not data.startswith("{"):
            return
        try:
            parsed = json.loads(data)
        except ValueError:
            return
        choices = _choices(parsed)
        if choices:
            self.openai_style = True
            if any(choice.get("finish_reason") for choice in choices):
                self.finished = True
        content = _delta_content(parsed)
        if content is not None:
            self.saw_chat_chunks = True
            self.text_parts.append(content)
        usage = reported_usage(parsed)
        if usage is not None:
            self.usage = usage

    @property
    def cut_short(self) -> bool:
        """An OpenAI-style stream that has not said it is over: no ``[DONE]``, no finish."""
        return self.openai_style and not self.done and not self.finished

    def result(self, status: int) -> dict[str, Any]:
        out: dict[str, Any] = {"status": status, "events": self.events, "done": self.done}
        if self.saw_chat_chunks:
            out["text"] = "".join(self.text_parts)
        if self.usage is not None:
            out["usage"] = self.usage
        return out


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def reported_usage(body: Any) -> dict[str, int] | None:
    """The token counts an OpenAI-style answer or chunk reports (its ``usage`` object)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {
        name: usage[name]
        for name in USAGE_FIELDS
        if isinstance(usage.get(name), int) and not isinstance(usage.get(name), bool)
    }
    return counts or None


def is_streaming_chat(body: Any) -> bool:
    """An OpenAI-style streaming chat request: ``stream: true`` and ``messages``."""
    return isinstance(body, dict) and body.get("stream") is True and "messages" in body


def asks_usage(body: Any) -> Any:
    """*body* asking for the usage chunk too, unless its client set ``stream_options`` (then
    the client's choice stands)."""
    if is_streaming_chat(body) and "stream_options" not in body:
        return {**body, "stream_options": {"include_usage": True}}
    return body


def is_unasked_usage(data: str, body: Any) -> bool:
    """Whether an event's *data* is the usage chunk outlast asked for on the client's behalf
    (``"choices": []`` and ``usage``): not passed to a pass-through client that did not."""
    if not is_streaming_chat(body) or "stream_options" in body:
        return False
    if not data.startswith("{") or '"usage"' not in data:
        return False
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and "usage" in chunk


def _choices(chunk: Any) -> list[dict[str, Any]]:
    """The ``choices`` of an OpenAI-style streaming chunk (chat or legacy completions), or []."""
    if not isinstance(chunk, dict):
        return []
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [c for c in choices if isinstance(c, dict) and ("delta" in c or "finish_reason" in c)]


def _delta_content(chunk: Any) -> str | None:
    """``choices[0].delta.content`` of an OpenAI-style streaming chunk, if that is what it is."""
    if not isinstance(chunk, dict):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    if not isinstance(delta, dict):
        return None
    content = delta.get("content")
    return content if isinstance(content, str) else ("" if "content" in delta else None)


async def stored_progress(store: Store, job: Job, max_bytes: int) -> Progress:
    progress = Progress()
    async for result in Follow(store, job_stream_name(job.id), 0, max_bytes):
        for unit in result.units if result is not None else ():
            for message in json.loads(b"[" + unit.data + b"]"):
                if message.get("type") == "event":
                    progress.add(
                        SSEEvent(
                            event=message.get("event") or "message",
                            data=message.get("data", ""),
                            id=message.get("id"),
                        )
                    )
    return progress
