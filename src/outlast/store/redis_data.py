"""How outlast keeps its data in Redis: key names, value encodings, and write layers.

The data model (every key starts with the store's prefix, ``outlast:`` by default)::

    s:<name>        hash   a stream's row (streams_logic.Row), one JSON value per field
    u:<name>        zset   its units, scored by start; member = start, end, count + data
    f:<name>        string the units of a closed stream, folded into one compressed record
                           (fold_units) in place of u:<name>: a closed stream costs about
                           what its compressed content does (layout 3)
    p:<name>        hash   its idempotent producers: id -> "epoch seq"
    sids            hash   stream id -> name            sseq   string  id allocator
    children        hash   stream id -> forks of it     sexp   zset    stream id by expiry
    j:<id>          hash   a job (models.JobRecord) while queued or running, one JSON value
                           per field
    jf:<id>         string a finished job, as one compressed record (pack_job) in place of
                           j:<id>: a hash holding a value past hash-max-listpack-value (64
                           bytes by default: an input, a result) makes Redis keep it in a larger
                           encoding, and a finished job changes little more (layout 4)
    jobs            zset   every job id (score 0: ordered by id, i.e. by creation time)
    jkeys           hash   idempotency key -> job id
    c:<queue>       hash   state -> number of jobs      queues set     queues with counts
    due:<queue>     zset   delayed queued jobs, run_at  leases zset    running jobs by expiry
    done            zset   terminal jobs by finished_at
    paused          hash   queue -> "1" while the queue is paused
    ready:<queue>   zset   queued jobs in start order, scored by ready_score(priority, turn);
                           equal scores go by member, the id: creation order
    qt:<queue>      hash   turn -> the turn of the job started last; lane -> the last turn
                           given to a job without a concurrency key (fair order: jobs_logic)
    kt:<queue>      hash   concurrency key -> the last turn given to one of its jobs
    kr:<queue>      hash   concurrency key -> jobs of it running
    up:<name>       hash   state -> a named upstream's limiter state (JSON; jobs_logic)
    hooks           zset   jobs whose webhook event is pending, by when it is next due
                           (webhooks_logic.due_at: the next attempt, or the lease's end)
    changes:<db>    channel  stream names and queue keys that changed (pub/sub channels are
                             server-wide, so the database number is part of the name)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from outlast.models import JobRecord, JobState
from outlast.store import streams_logic as logic
from outlast.store.base import Unit

# A unit as a sorted-set member: start, end, message count, then the data.
UNIT_HEADER = struct.Struct(">QQI")
ROW_FIELDS = tuple(f.name for f in dataclasses.fields(logic.Row))
JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))

# A command for Redis: its arguments, as redis-py packs them.
Command = tuple[str | bytes | int | float, ...]
# Sends commands in one round trip; returns one reply per command.
Call = Callable[[Sequence[Command]], list[Any]]


def pack_unit(unit: Unit) -> bytes:
    return UNIT_HEADER.pack(unit.start, unit.end, unit.count) + unit.data


def unpack_unit(member: bytes) -> Unit:
    start, end, count = UNIT_HEADER.unpack_from(member)
    return Unit(start, end, count, bytes(member[UNIT_HEADER.size :]))


# A folded unit: start, end, message count, length of the data; then the data.
FOLDED_HEADER = struct.Struct(">QQII")
# A closed stream holding more than this much data keeps its units one by one: a read of a
# folded stream decompresses all of it.
FOLD_MAX = 1 << 20


def fold_units(units: Sequence[Unit]) -> bytes:
    """Units (in order) as one compressed record."""
    parts: list[bytes] = []
    for unit in units:
        parts.append(FOLDED_HEADER.pack(unit.start, unit.end, unit.count, len(unit.data)))
        parts.append(unit.data)
    return zlib.compress(b"".join(parts), 6)


def unfold_units(record: bytes) -> list[Unit]:
    raw = zlib.decompress(record)
    units: list[Unit] = []
    at, size = 0, FOLDED_HEADER.size
    while at < len(raw):
        start, end, count, length = FOLDED_HEADER.unpack_from(raw, at)
        at += size
        units.append(Unit(start, end, count, raw[at : at + length]))
        at += length
    return units


# 19 digits and more may be an integer orjson cannot hold (past 2**63 - 1).
_LONG_NUMBER = re.compile(r"[0-9]{19}")
_LONG_NUMBER_BYTES = re.compile(rb"[0-9]{19}")


def dumps(value: Any) -> str:
    """One field's value as JSON text. orjson for speed (every job's fields are encoded at each
    transition); json for what orjson refuses or writes differently: integers past 64 bits, and
    floats that are not finite (JSON has no such numbers; json writes them so that they load
    back as they were)."""
    if type(value) is float and not math.isfinite(value):
        return json.dumps(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


def _orjson_or_json(text: bytes) -> Any:
    """JSON text without integers past 64 bits: json for what orjson refuses (NaN)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def loads(text: str | bytes) -> Any:
    """A field's value back (whichever of :func:`dumps`'s encoders wrote it). orjson reads an
    integer past 64 bits as a float: text with a run of that many digits goes through json."""
    if isinstance(text, bytes):
        long = len(text) >= 19 and _LONG_NUMBER_BYTES.search(text) is not None
    else:
        long = len(text) >= 19 and _LONG_NUMBER.search(text) is not None
    if not long:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def encode_fields(values: dict[str, Any]) -> dict[str, str]:
    return {key: dumps(value) for key, value in values.items()}


def decode_row(raw: dict[str, str]) -> logic.Row:
    return logic.Row(**{name: loads(raw[name]) for name in ROW_FIELDS})


def decode_job(raw: dict[str, str]) -> JobRecord:
    values = {name: loads(raw[name]) for name in JOB_FIELDS if name in raw}
    values["state"] = JobState(values["state"])
    return JobRecord(**values)


def decode_row_reply(flat: list[bytes]) -> logic.Row:
    """A stream's row straight from its ``HGETALL`` reply (what decode_row(pairs(flat)) gives,
    without making text of every value first)."""
    values = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    return logic.Row(**{name: loads(values[name]) for name in ROW_FIELDS})


def decode_job_reply(flat: list[bytes]) -> JobRecord:
    """A job straight from its ``HGETALL`` reply (as decode_job(pairs(flat)))."""
    values = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    job = {name: loads(values[name]) for name in JOB_FIELDS if name in values}
    job["state"] = JobState(job["state"])
    return JobRecord(**job)


def job_fields(job: JobRecord) -> dict[str, Any]:
    return {name: getattr(job, name) for name in JOB_FIELDS}


# A finished job's fields that hold their default are left out of its record, and so is its
# id (the record's key holds it).
_JOB_DEFAULTS = {
    f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    for f in dataclasses.fields(JobRecord)
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
}
# A finished job's record: a format byte, then its fields as one JSON object, deflated (raw,
# without zlib's header) with this preset dictionary: the names of the fields, common values,
# and the words of the relay task's input and result (a small record is mostly these). Part of
# the format: records are read with it, so it never changes. The format byte says whether the
# text holds a run of digits that may be an integer orjson cannot read (see loads): looked for
# once, when the record is written, not at every read.
JOB_RECORD = b"\x01"
JOB_RECORD_LONG_NUMBERS = b"\x02"
JOB_RECORD_DICT = (
    b'{"task":"queue":"state":"queued""running""succeeded""failed""cancelled""input":'
    b'"attempt":"max_attempts":"timeout":"created_at":"run_at":"result":"error":{"code":'
    b'"message":"started_at":"finished_at":"key":"lease_owner":"lease_expires":'
    b'"cancel_requested":true"extra":"callback":{"url":"http"events":["job.succeeded",'
    b'"job.failed","job.cancelled"],"state":"delivered","attempts":"priority":'
    b'"concurrency_key":"retry_of":"job_"turn":"waiting":"waited":'
    b'{"upstream":"path":"/v1/chat/completions","method":"headers":"body":{"model":'
    b'"messages":[{"role":"user","content":"stream":true}{"status":200,"events":"done":true,'
    b'"text":"usage":{"prompt_tokens":"completion_tokens":"total_tokens":'
)


def pack_job(job: JobRecord) -> bytes:
    """A job as one compressed record (each value as :func:`dumps` writes it)."""
    parts = []
    for name in JOB_FIELDS:
        value = getattr(job, name)
        default = _JOB_DEFAULTS.get(name, dataclasses.MISSING)
        if name == "id" or (type(value) is type(default) and value == default):
            continue
        parts.append(f'"{name}":{dumps(value)}')
    text = ("{" + ",".join(parts) + "}").encode()
    kind = JOB_RECORD_LONG_NUMBERS if _LONG_NUMBER_BYTES.search(text) else JOB_RECORD
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=JOB_RECORD_DICT)
    return kind + packer.compress(text) + packer.flush()


def unpack_job(job_id: str, record: bytes) -> JobRecord:
    kind = record[:1]
    if kind not in (JOB_RECORD, JOB_RECORD_LONG_NUMBERS):
        raise ValueError(f"job {job_id}: a record of an unknown format ({kind!r})")
    unpacker = zlib.decompressobj(-15, zdict=JOB_RECORD_DICT)
    text = unpacker.decompress(record[1:]) + unpacker.flush()
    values = _orjson_or_json(text) if kind == JOB_RECORD else json.loads(text)
    job = {name: values[name] for name in JOB_FIELDS if name in values}
    job["id"] = job_id
    job["state"] = JobState(job["state"])
    return JobRecord(**job)


def stored_job(job_id: str, flat: dict[Any, Any], record: bytes | None) -> JobRecord | None:
    """A job from what a reader got of its two keys (see the data model above): its hash (an
    ``HGETALL`` reply, a dict) and its finished record; ``None`` when neither is there."""
    if record is not None:
        return unpack_job(job_id, record)
    if not flat:
        return None
    return decode_job({_text(k): _text(v) for k, v in flat.items()})


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def pairs(flat: list[Any]) -> dict[str, str]:
    """A RESP2 ``HGETALL`` reply (a flat list) as a dict of text."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str, db: int = 0) -> None:
        self.prefix = prefix
        self.sids = prefix + "sids"
        self.sseq = prefix + "sseq"
        self.children = prefix + "children"
        self.sexp = prefix + "sexp"
        self.jobs = prefix + "jobs"
        self.jkeys = prefix + "jkeys"
        self.queues = prefix + "queues"
        self.leases = prefix + "leases"
        self.done = prefix + "done"
        self.paused = prefix + "paused"
        self.hooks = prefix + "hooks"
        self.changes = f"{prefix}changes:{db}"

    def stream(self, name: str) -> str:
        return f"{self.prefix}s:{name}"

    def units(self, name: str) -> str:
        return f"{self.prefix}u:{name}"

    def folded(self, name: str) -> str:
        return f"{self.prefix}f:{name}"

    def producers(self, name: str) -> str:
        return f"{self.prefix}p:{name}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}j:{job_id}"

    def finished_job(self, job_id: str) -> str:
        return f"{self.prefix}jf:{job_id}"

    def finished_of(self, key: str) -> str | None:
        """For a job's hash (its key), the key of its finished record; else ``None``."""
        head = f"{self.prefix}j:"
        return self.finished_job(key[len(head) :]) if key.startswith(head) else None

    def counts(self, queue: str) -> str:
        return f"{self.prefix}c:{queue}"

    def due(self, queue: str) -> str:
        return f"{self.prefix}due:{queue}"

    def ready(self, queue: str) -> str:
        return f"{self.prefix}ready:{queue}"

    def turns(self, queue: str) -> str:
        return f"{self.prefix}qt:{queue}"

    def key_turns(self, queue: str) -> str:
        return f"{self.prefix}kt:{queue}"

    def key_running(self, queue: str) -> str:
        return f"{self.prefix}kr:{queue}"

    def upstream(self, name: str) -> str:
        return f"{self.prefix}up:{name}"


# A ready job's score: priority first (highest first), then turn. A double holds 53 bits
# exactly: 8 for the priority (-100..100), 45 for the turn.
TURN_BITS = 45


def ready_score(priority: int, turn: int) -> float:
    return float(((100 - priority) << TURN_BITS) + turn)


class Layer:
    """Writes not yet sent: hash fields (``None`` deletes), sorted-set members (``None``
    removes), string values, counter increments, and keys deleted before the writes recorded
    here."""

    __slots__ = ("cleared", "deltas", "extra", "hashes", "strings", "zsets")

    def __init__(self) -> None:
        self.cleared: set[str] = set()
        self.hashes: dict[str, dict[str, str | None]] = {}
        self.strings: dict[str, bytes] = {}
        self.zsets: dict[str, dict[bytes, float | None]] = {}
        self.deltas: dict[tuple[str, str], int] = {}
        self.extra: list[Command] = []

    def merge(self, top: Layer) -> None:
        for key in top.cleared:
            self.cleared.add(key)
            self.hashes.pop(key, None)
            self.zsets.pop(key, None)
            self.strings.pop(key, None)
        self.strings.update(top.strings)
        for key, fields in top.hashes.items():
            self.hashes.setdefault(key, {}).update(fields)
        for key, members in top.zsets.items():
            self.zsets.setdefault(key, {}).update(members)
        for field, delta in top.deltas.items():
            self.deltas[field] = self.deltas.get(field, 0) + delta
        self.extra.extend(top.extra)

    def commands(self) -> list[Command]:
        """The writes, as commands for one ``MULTI``/``EXEC``."""
        out: list[Command] = [("DEL", key) for key in sorted(self.cleared)]
        out += [("SET", key, value) for key, value in self.strings.items()]
        for key, fields in self.hashes.items():
            gone = [f for f, v in fields.items() if v is None]
            kept = [x for f, v in fields.items() if v is not None for x in (f, v)]
            if gone:
                out.append(("HDEL", key, *gone))
            if kept:
                out.append(("HSET", key, *kept))
        for key, members in self.zsets.items():
            removed = [m for m, s in members.items() if s is None]
            added = [x for m, s in members.items() if s is not None for x in (repr(s), m)]
            if removed:
                out.append(("ZREM", key, *removed))
            if added:
                out.append(("ZADD", key, *added))
        for (key, field), delta in self.deltas.items():
            if delta:
                out.append(("HINCRBY", key, field, delta))
        out.extend(self.extra)
        return out


class IdBlock:
    """Stream ids handed out from blocks reserved with ``INCRBY`` (no conflicts between
    processes, and ids that are never reused)."""

    SIZE = 1000

    def __init__(self) -> None:
        self.next = 0
        self.end = 0
