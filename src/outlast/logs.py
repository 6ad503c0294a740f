"""Logs on stderr: one JSON object per line, or (``text``) a plain line for people.

``--log-format auto`` (the default, also ``[logs] format``) writes text when stderr is a terminal
and JSON otherwise (a file, a pipe, journald, a log shipper).

Every request also gets a line on the ``outlast.access`` logger (:class:`AccessLog`). That one
is written on the hot path of every request, so it skips the usual ``LogRecord`` machinery when
its lines go to the handler :func:`configure_logging` installs (:class:`BufferedLineHandler`): the
line is kept as a tuple and serialised with others, in one ``write``, a little later. Any other
logging set-up gets ordinary records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, ClassVar

import orjson
from starlette.types import Scope

ACCESS_LOGGER = "outlast.access"
# Buffered access lines are written at most this long after the request ended...
ACCESS_FLUSH_INTERVAL = 0.2
# ...or as soon as this many are waiting.
ACCESS_FLUSH_LINES = 512

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
# uvicorn adds ``color_message``, the message again with ANSI colours: not a field either.
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",
}
LOG_FORMATS = ("auto", "text", "json")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """One line for people: time, level, logger, message, then the fields as ``key=value``.

    An access line reads ``POST /v1/jobs 202 1.2 ms 310 B job_id=job_...``. With *colour* the
    level is coloured, as uvicorn does on a terminal.
    """

    COLOURS: ClassVar[dict[str, int]] = {
        "DEBUG": 36,
        "INFO": 32,
        "WARNING": 33,
        "ERROR": 31,
        "CRITICAL": 91,
    }

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = f"{record.levelname:<7}"
        if self.colour and record.levelname in self.COLOURS:
            level = f"\x1b[{self.COLOURS[record.levelname]}m{level}\x1b[0m"
        message = record.getMessage()
        if {"method", "path", "status"} <= fields.keys():
            method, path, status = fields.pop("method"), fields.pop("path"), fields.pop("status")
            message = f"{method} {path} {status}"
            if "duration_ms" in fields:
                message += f" {fields.pop('duration_ms'):g} ms"
            if "bytes" in fields:
                message += f" {fields.pop('bytes')} B"
        parts = [f"{stamp}.{int(record.msecs):03d} {level} {record.name}: {message}"]
        parts += [f"{key}={_text_value(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that collects lines and writes them in batches.

    Ordinary records are formatted as usual. :meth:`add_entry` takes a tuple that a renderer
    turns into a line only when the batch is written: the request path stores a tuple and
    returns. Lines wait at most :data:`ACCESS_FLUSH_INTERVAL` (on the running event loop; at once
    when there is none) or until :data:`ACCESS_FLUSH_LINES` are waiting. ``logging.shutdown()``,
    which runs at every clean exit, flushes what is left.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__(stream)
        self._items: list[bytes | tuple[Any, ...]] = []
        self._render: Callable[[tuple[Any, ...]], bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._write_lock = threading.Lock()

    def add_entry(self, entry: tuple[Any, ...], render: Callable[[tuple[Any, ...]], bytes]) -> None:
        self._render = render
        self._add(entry)

    def _add(self, item: bytes | tuple[Any, ...]) -> None:
        self._items.append(item)
        if len(self._items) >= ACCESS_FLUSH_LINES:
            self.flush()
            return
        if self._timer_loop is not None and not self._timer_loop.is_closed():
            return  # a flush is due already
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(ACCESS_FLUSH_INTERVAL, self.flush)
        self._timer_loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._add(line.encode())

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_loop = None
        items, self._items = self._items, []
        if not items:
            return
        render = self._render
        lines = [
            item if isinstance(item, bytes) or render is None else render(item) for item in items
        ]
        data = b"".join(lines)  # type: ignore[arg-type]  # every tuple had a renderer
        with self._write_lock:
            stream = self.stream
            binary = getattr(stream, "buffer", None)
            try:
                if binary is not None:
                    stream.flush()  # whatever other handlers left in the text layer goes first
                    binary.write(data)
                    binary.flush()
                else:
                    stream.write(data.decode())
                    stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing left to tell
                pass


class AccessLog:
    """One JSON line per HTTP request on the ``outlast.access`` logger.

    Fields: ``method``, ``path``, ``status``, ``duration_ms`` (to the end of the response body),
    ``bytes`` (of the response body) and ``job_id`` when the request concerns a job. The logger's
    level and ``disabled`` flag turn it on and off like any other.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._logger_name = _json_str(self.logger.name)
        self._second = -1
        self._prefix = ""

    def enabled(self) -> bool:
        return not self.logger.disabled and self.logger.isEnabledFor(logging.INFO)

    def _fast_handler(self) -> BufferedLineHandler | None:
        """The handler lines can go to without records: the logger's only one."""
        logger = self.logger
        if len(logger.handlers) == 1 and not logger.propagate:
            handler = logger.handlers[0]
            if type(handler) is BufferedLineHandler and handler.level <= logging.INFO:
                return handler
        return None

    def request(
        self, scope: Scope, status: int, seconds: float, sent: int, job_id: str | None
    ) -> None:
        handler = self._fast_handler()
        if handler is not None:
            entry = (time.time(), scope["method"], scope["path"], status, seconds, sent, job_id)
            handler.add_entry(entry, self._render)
            return
        path: str = scope["path"]
        fields = {
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "bytes": sent,
        }
        job_id = job_id or job_id_of(path)
        if job_id is not None:
            fields["job_id"] = job_id
        self.logger.info("request", extra=fields)

    def _render(self, entry: tuple[Any, ...]) -> bytes:
        now, method, path, status, seconds, sent, job_id = entry
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        job_id = job_id or job_id_of(path)
        # Plain strings (the usual case) are written as they are; others through orjson, which
        # escapes them. The result is what orjson.dumps would make of the same dict.
        job = "" if job_id is None else f',"job_id":{_json_str(job_id)}'
        return (
            f'{{"ts":"{self._prefix}.{int((now - second) * 1000):03d}Z","level":"info",'
            f'"logger":{self._logger_name},"msg":"request","method":{_json_str(method)},'
            f'"path":{_json_str(path)},"status":{status},'
            f'"duration_ms":{round(seconds * 1000, 3)!r},"bytes":{sent}{job}}}\n'
        ).encode()


def _json_str(value: str) -> str:
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return orjson.dumps(value).decode()


def job_id_of(path: str) -> str | None:
    """The job a request path is about: ``/v1/jobs/<id>...``, or its stream
    ``/v1/stream/jobs/<id>``."""
    if path.startswith("/v1/jobs/"):
        return path[9:].split("/", 1)[0] or None
    if path.startswith("/v1/stream/jobs/"):
        return path[16:].split("/", 1)[0] or None
    return None


# Libraries whose INFO lines hold upstream URLs (with their query secrets).
QUIET_LOGGERS = ("httpx", "httpcore")


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own error logger is useful; its access log is replaced by ours.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request's full URL at INFO, query secrets included; outlast's own lines
    # say what a job did without them.
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    access = logging.getLogger(ACCESS_LOGGER)
    buffered = BufferedLineHandler(sys.stderr)
    buffered.setFormatter(JSONFormatter())
    # Its own handler, on the same stream: lines are batched (see BufferedLineHandler). Whether
    # an application logs requests at all is its setting ([server] access_log).
    access.handlers[:] = [buffered]
    access.propagate = False
    # Job transitions (one line each) are batched the same way, by a handler of their own.
    configure_job_log(sys.stderr)


JOBS_LOGGER = "outlast.jobs"


class JobLog:
    """One JSON line per job transition on the ``outlast.jobs`` logger (SPEC §6), with its job id.

    Written like :class:`AccessLog`'s lines, as one runs per job on the worker's hot path: when
    the logger's only handler is a :class:`BufferedLineHandler` (what :func:`configure_logging`
    installs) a line is kept as a tuple and rendered when its batch is written; under any other
    logging set-up it is an ordinary record whose ``extra`` fields are the same. The logger's
    level and ``disabled`` flag turn the lines on and off like any other.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(JOBS_LOGGER)
        self._second = -1
        self._prefix = ""

    def info(self, msg: str, job_id: str, fields: dict[str, Any]) -> None:
        """Log *msg* about *job_id*, with *fields* (JSON values) beside it."""
        logger = self.logger
        if logger.disabled or not logger.isEnabledFor(logging.INFO):
            return
        handlers = logger.handlers
        if len(handlers) == 1 and not logger.propagate:
            handler = handlers[0]
            if type(handler) is BufferedLineHandler and handler.level <= logging.INFO:
                handler.add_entry((time.time(), msg, job_id, fields), self._render)
                return
        logger.info(msg, extra={"job_id": job_id, **fields})

    def _render(self, entry: tuple[Any, ...]) -> bytes:
        now, msg, job_id, fields = entry
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {
            "ts": f"{self._prefix}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "logger": self.logger.name,
            "msg": msg,
            "job_id": job_id,
            **fields,
        }
        return orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)


def configure_job_log(stream: IO[str]) -> None:
    """Job lines go to their own batching handler on *stream* (see :class:`JobLog`)."""
    jobs = logging.getLogger(JOBS_LOGGER)
    buffered = BufferedLineHandler(stream)
    buffered.setFormatter(JSONFormatter())
    jobs.handlers[:] = [buffered]
    jobs.propagate = False


def resolve_log_format(log_format: str, stream: IO[str]) -> str:
    """``text`` or ``json``: ``auto`` is text on a terminal, JSON anywhere else."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    if log_format != "auto":
        return log_format
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "json"


def use_log_format(log_format: str) -> None:
    """Write what :func:`configure_logging` set up in *log_format* (``auto``, ``text`` or
    ``json``, which it already is). Text lines are for people on a terminal: plain records,
    each written as it comes, on one handler for every logger."""
    stream = sys.stderr
    if resolve_log_format(log_format, stream) == "json":
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter(colour=stream.isatty()))
    for name in ("", ACCESS_LOGGER, JOBS_LOGGER):
        logging.getLogger(name).handlers[:] = [handler]
