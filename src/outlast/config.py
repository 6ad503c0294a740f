"""Settings: one TOML file, overridden by ``OUTLAST_<SECTION>__<KEY>`` variables, then by flags.

Precedence, lowest first: built-in defaults → ``outlast.toml`` → environment → command-line flags.
Unknown keys are an error that names the key, wherever they come from. Durations are seconds.
Nothing here does I/O at import time; :func:`load_settings` reads the file and the environment.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from outlast.errors import ConfigError

log = logging.getLogger("outlast.config")

ENV_PREFIX = "OUTLAST_"
DEFAULT_STORE = "sqlite:///./outlast.db"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    store: str = DEFAULT_STORE
    grace: float = Field(default=30.0, ge=0)
    app: str = ""
    insecure: bool = False
    # Processes serving the port (`serve --workers N`); 0 = one per core. 1 runs in this
    # process, without a supervisor.
    workers: int = Field(default=1, ge=0, le=256)
    run_jobs: bool = True  # run job workers in `serve` (false: API only)
    # One JSON line per request on the `outlast.access` logger.
    access_log: bool = True
    # Without tokens, only requests whose Host is a loopback name or address are served (a web
    # page cannot reach outlast through DNS rebinding); these host names are served too (a
    # local reverse proxy's name, with or without a port). "*" serves any.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Request headers beyond either limit answer 431 and close the connection.
    max_header_bytes: int = Field(default=64 << 10, gt=0)
    max_header_count: int = Field(default=100, gt=0)
    # A request's headers must arrive within this; a connection that sends nothing is closed.
    header_timeout: float = Field(default=10.0, gt=0)
    # An idle connection between two requests is closed after this.
    keep_alive_timeout: float = Field(default=5.0, gt=0)
    # Open connections at most (live readers included); more are answered 503 and closed.
    max_connections: int = Field(default=20_000, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _boolean_workers(cls, data: Any) -> Any:
        # `workers = true/false` meant "run job workers in this process" until it became the
        # number of processes: read as `run_jobs`, with a warning.
        if isinstance(data, Mapping) and isinstance(data.get("workers"), bool):
            log.warning(
                "[server] workers = %s is deprecated: it is now the number of processes; "
                "use run_jobs = %s (read as that)",
                str(data["workers"]).lower(),
                str(data["workers"]).lower(),
            )
            data = {"run_jobs": data["workers"], **data}
            del data["workers"]
        return data


class StoreSettings(_Section):
    # false: a commit survives the process being killed (kill -9), not a power loss, and costs no
    # disk flush. true: every acknowledged write is also flushed to disk before the answer.
    fsync: bool = False


class StreamSettings(_Section):
    # The conformance suite runs with 0.5 s: its tests use vitest's 5 s timeout.
    long_poll_timeout: float = Field(default=30.0, gt=0)
    # SSE connections are closed about once a minute so that caches can collapse readers
    # (protocol §8.2); clients reconnect from their last offset.
    sse_max_duration: float = Field(default=60.0, gt=0)
    # Largest body a single catch-up read returns; more data means another request.
    max_read_bytes: int = Field(default=1 << 20, gt=0)
    max_readers_per_stream: int = Field(default=10_000, gt=0)


class SSESettings(_Section):
    keepalive: float = Field(default=15.0, gt=0)


class JobSettings(_Section):
    lease: float = Field(default=30.0, gt=0)
    retention_days: float = Field(default=7.0, gt=0)
    # Retries wait backoff_base * 2^(attempt-1) seconds, capped, times a random 0.5-1.0 (jitter).
    backoff_base: float = Field(default=1.0, ge=0)
    backoff_max: float = Field(default=300.0, ge=0)
    # Threads for plain `def` tasks; 0 means the sum of the queues' concurrency.
    threads: int = Field(default=0, ge=0)
    # How long GET /v1/jobs/<id>?wait= may wait at most.
    max_wait: float = Field(default=60.0, gt=0)
    # Seconds a job may wait in all for upstream rate limits (429/503 with Retry-After, an
    # upstream's rpm/tpm/max_concurrency) before it fails instead.
    rate_limit_wait_max: float = Field(default=600.0, ge=0)


class QueueSettings(_Section):
    concurrency: int = Field(default=8, ge=1)
    capacity: int = Field(default=1000, ge=1)
    # Jobs of one concurrency_key running at once, across every node; 0 = no limit.
    per_key_concurrency: int = Field(default=0, ge=0)


class UpstreamSettings(_Section):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    allow_private: bool = False
    # The queue its relays run on, and their retries before the first event (default: the
    # relay task's). The pass-through makes one upstream call per request unless a limit below
    # is set (its clients retry by themselves): see docs/flow-control.md.
    queue: str = "relay"
    retries: int | None = Field(default=None, ge=0, le=100)
    # Relays to it at once (all nodes), requests per minute (evenly spaced), tokens per minute
    # (from the usage upstreams report); 0 = no limit.
    max_concurrency: int = Field(default=0, ge=0)
    rpm: float = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)

    @property
    def limited(self) -> bool:
        return bool(self.max_concurrency or self.rpm or self.tpm)


class EgressSettings(_Section):
    allowed_hosts: list[str] = Field(default_factory=list)
    allow_private: bool = False


class WebhookSettings(_Section):
    # Standard Webhooks secret: "whsec_" + base64 of the key. Callbacks are refused without one.
    secret: str = ""
    timeout: float = Field(default=10.0, gt=0)  # seconds per attempt
    # Attempts go on this long after the event (or a manual retry); then the callback failed.
    retry_for: float = Field(default=86400.0, gt=0)
    allowed_hosts: list[str] = Field(default_factory=list)  # beside [egress] allowed_hosts
    allow_private: bool = False  # loopback and private addresses (an app on the same host)
    # A testing knob, not for production: multiplies the retry schedule (5 s, 30 s, ...).
    backoff_scale: float = Field(default=1.0, gt=0)

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: str) -> str:
        if value:
            from outlast.webhooks import secret_key

            secret_key(value)  # raises ValueError naming what is wrong
        return value


class RelaySettings(_Section):
    connect_timeout: float = Field(default=10.0, gt=0)
    # Until the upstream's response headers (and so its status) arrive.
    first_byte_timeout: float = Field(default=60.0, gt=0)
    # Longest silence between two pieces of the upstream's body.
    idle_timeout: float = Field(default=60.0, gt=0)
    max_line_bytes: int = Field(default=1 << 20, gt=0)
    max_event_bytes: int = Field(default=8 << 20, gt=0)
    # How much of an upstream error body is kept in the job's error.
    excerpt_bytes: int = Field(default=2048, gt=0)
    # Largest non-event-stream body kept as the result (a plain JSON answer, say).
    max_body_bytes: int = Field(default=8 << 20, gt=0)


class TokenSettings(_Section):
    name: str
    token_sha256: str
    scopes: list[str]

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be the hex SHA-256 of the token (64 hex digits)")
        return value


class AuthSettings(_Section):
    tokens: list[TokenSettings] = Field(default_factory=list)
    # Key for signed read links (`sig=`); derived from the tokens when empty.
    signing_key: str = ""


class LimitSettings(_Section):
    job_body_bytes: int = Field(default=1 << 20, gt=0)
    batch_body_bytes: int = Field(default=16 << 20, gt=0)
    append_bytes: int = Field(default=8 << 20, gt=0)
    stream_name_length: int = Field(default=1024, gt=0)


class LogSettings(_Section):
    # auto: text lines for people when stderr is a terminal, JSON lines otherwise.
    format: Literal["auto", "text", "json"] = "auto"


class CorsSettings(_Section):
    # Origins (scheme://host[:port]) whose pages may call outlast; "*" allows any. Requests
    # from any other origin are refused.
    origins: list[str] = Field(default_factory=list)


# The built-in queues: "default" for tasks without a queue of their own, "relay" for the
# built-in relay and http tasks (they wait on the network, not the CPU: many run at once).
RELAY_QUEUE_DEFAULTS = {"concurrency": 256, "capacity": 10_000}


def _default_queues() -> dict[str, QueueSettings]:
    return {"default": QueueSettings(), "relay": QueueSettings(**RELAY_QUEUE_DEFAULTS)}


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    sse: SSESettings = Field(default_factory=SSESettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    queues: dict[str, QueueSettings] = Field(default_factory=_default_queues)
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    cors: CorsSettings = Field(default_factory=CorsSettings)
    logs: LogSettings = Field(default_factory=LogSettings)

    @field_validator("queues", mode="before")
    @classmethod
    def _relay_queue_defaults(cls, queues: Any) -> Any:
        # [queues.relay] keeps its own defaults for the keys it does not set.
        if isinstance(queues, Mapping) and isinstance(queues.get("relay"), Mapping):
            queues = {**queues, "relay": {**RELAY_QUEUE_DEFAULTS, **queues["relay"]}}
        return queues

    @field_validator("queues")
    @classmethod
    def _keep_default_queue(cls, queues: dict[str, QueueSettings]) -> dict[str, QueueSettings]:
        # Tasks without a queue of their own run on "default", the built-in relay and http
        # tasks on "relay": configuring another queue must not take them away.
        if "default" not in queues:
            queues = {"default": QueueSettings(), **queues}
        if "relay" not in queues:
            queues = {**queues, "relay": QueueSettings(**RELAY_QUEUE_DEFAULTS)}
        return queues

    @model_validator(mode="after")
    def _upstream_queues_exist(self) -> Settings:
        for name, upstream in self.upstreams.items():
            if upstream.queue not in self.queues:
                raise ValueError(
                    f"upstreams.{name}.queue: no queue named {upstream.queue!r} "
                    "(configure it under [queues])"
                )
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth.tokens)


def _parse_env_value(raw: str) -> Any:
    """Environment values are TOML/JSON scalars or arrays when they parse as such, else strings."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The settings the environment sets, and which variable set each key path."""
    tree: dict[str, Any] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if any(not part for part in path):
            raise ConfigError(f"malformed environment variable {name}")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another one")
        node[path[-1]] = _parse_env_value(raw)
        names[tuple(path)] = name
    return tree, names


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(
    error: ValidationError,
    source: str,
    env_names: Mapping[tuple[str, ...], str],
    flags: Mapping[str, Any],
) -> str:
    lines = []
    sources = []
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        where = ".".join(loc)
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'")
        else:
            lines.append(f"'{where}': {item['msg']}")
        origin = _origin(loc, env_names, flags) or source
        if origin not in sources:
            sources.append(origin)
    return f"invalid configuration ({', '.join(sources)}): " + "; ".join(lines)


def _origin(
    loc: tuple[str, ...], env_names: Mapping[tuple[str, ...], str], flags: Mapping[str, Any]
) -> str | None:
    """Where the value at *loc* came from when the environment or a flag set it (the latest
    source wins, as in the merge)."""
    if not loc:
        return None  # a rule over several keys (the whole settings)
    node: Any = flags
    for part in loc:
        if not isinstance(node, Mapping) or part not in node:
            break
        node = node[part]
    else:
        return "command-line flag --" + loc[-1].replace("_", "-")
    for length in range(len(loc), 0, -1):
        name = env_names.get(loc[:length])
        if name is not None:
            return f"environment variable {name}"
    return None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from the file at *path* (if any), the environment and *overrides*.

    *overrides* is a nested mapping such as ``{"server": {"port": 9000}}`` (from CLI flags).
    A missing explicit *path* is an error; with no path, ``./outlast.toml`` is read if present.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and Path("outlast.toml").is_file():
        path = "outlast.toml"
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        source = str(path)
    env, env_names = _env_overrides(os.environ if environ is None else environ)
    data = _merge(data, env)
    if overrides:
        data = _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, env_names, overrides or {})) from exc
