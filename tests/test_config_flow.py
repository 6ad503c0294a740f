"""Settings for flow control (docs/configuration.md): the built-in relay queue, an upstream's
queue, retries and limits, and a queue's per-key limit."""

from __future__ import annotations

import pytest

from outlast.config import load_settings
from outlast.errors import ConfigError


def test_the_relay_queue_is_configured_by_default_beside_default() -> None:
    settings = load_settings(environ={})
    assert set(settings.queues) == {"default", "relay"}
    relay = settings.queues["relay"]
    assert (relay.concurrency, relay.capacity, relay.per_key_concurrency) == (256, 10_000, 0)
    assert settings.queues["default"].concurrency == 8


def test_a_relay_queue_setting_keeps_the_other_relay_defaults() -> None:
    env = {"OUTLAST_QUEUES__RELAY__CONCURRENCY": "64", "OUTLAST_QUEUES__BATCH__CAPACITY": "5"}
    settings = load_settings(environ=env)
    assert set(settings.queues) == {"default", "relay", "batch"}
    assert (settings.queues["relay"].concurrency, settings.queues["relay"].capacity) == (64, 10_000)


def test_an_upstream_takes_a_queue_retries_and_limits() -> None:
    env = {
        "OUTLAST_UPSTREAMS__LLM__URL": "https://api.example.com",
        "OUTLAST_UPSTREAMS__LLM__QUEUE": "default",
        "OUTLAST_UPSTREAMS__LLM__RETRIES": "1",
        "OUTLAST_UPSTREAMS__LLM__MAX_CONCURRENCY": "4",
        "OUTLAST_UPSTREAMS__LLM__RPM": "60",
        "OUTLAST_UPSTREAMS__LLM__TPM": "90000",
        "OUTLAST_QUEUES__DEFAULT__PER_KEY_CONCURRENCY": "2",
    }
    settings = load_settings(environ=env)
    llm = settings.upstreams["llm"]
    assert (llm.queue, llm.retries, llm.max_concurrency, llm.rpm, llm.tpm) == (
        "default",
        1,
        4,
        60,
        90_000,
    )
    assert llm.limited
    assert settings.queues["default"].per_key_concurrency == 2
    plain = load_settings(environ={"OUTLAST_UPSTREAMS__X__URL": "https://x.example.com"})
    assert plain.upstreams["x"].queue == "relay" and not plain.upstreams["x"].limited


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("OUTLAST_UPSTREAMS__LLM__QUEUE", "nope", "upstreams.llm.queue"),
        ("OUTLAST_UPSTREAMS__LLM__RETRIES", "-1", "upstreams.llm.retries"),
        ("OUTLAST_UPSTREAMS__LLM__RPM", "-5", "upstreams.llm.rpm"),
        ("OUTLAST_QUEUES__DEFAULT__PER_KEY_CONCURRENCY", "-1", "queues.default.per_key"),
    ],
)
def test_bad_flow_settings_are_refused_naming_the_key(key: str, value: str, named: str) -> None:
    env = {"OUTLAST_UPSTREAMS__LLM__URL": "https://api.example.com", key: value}
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=env)
