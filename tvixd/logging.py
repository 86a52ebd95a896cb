"""Structured logs: every record carries its context (job id, derivation path, digest, …).

Context comes from two places, merged into each record:

* :func:`log_context` — a context manager binding keys for the current task
  and the tasks it starts (``contextvars``)::

      with log_context(job="j-42", drv="/nix/store/…-hello.drv"):
          log.info("building")          # … job=j-42 drv=/nix/store/…-hello.drv

* ``extra=`` on a call: ``log.info("put", extra={"digest": d})``.

Two formats: ``text`` — ``key=value`` pairs (logfmt; values with spaces or
quotes are quoted), and ``json`` — one object per line.  Both put ``time``,
``level``, ``logger`` and ``msg`` first, then the context keys sorted,
then ``exc`` (the traceback) when there is one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any

__all__ = ["JsonFormatter", "KeyValueFormatter", "log_context", "setup_logging"]

_EMPTY: Mapping[str, object] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "tvixd_log_context", default=_EMPTY
)
# attributes every LogRecord has; anything else on a record came from extra=
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "context",
}


@contextmanager
def log_context(**keys: object) -> Iterator[None]:
    """Bind ``keys`` to every record logged in this context (nested bindings add up)."""
    token = _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **keys}))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = dict(getattr(record, "context", None) or _CONTEXT.get())
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return dict(sorted(fields.items()))


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class _ContextFilter(logging.Filter):
    """Captures the context at the call (the handler may run elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = _CONTEXT.get()
        return True


def _logfmt(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """``time=… level=info logger=tvixd.daemon msg="listening" job=j-1`` (logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, object]] = [
            ("time", _time(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
            *_fields(record).items(),
        ]
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_logfmt(value)}" for key, value in pairs)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; non-JSON values are written as strings."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def setup_logging(level: str, fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to ``stream`` (stderr) in ``fmt``.

    Replaces handlers installed by an earlier call; returns the new handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_tvixd", False)]:
        root.removeHandler(old)
    handler._tvixd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
