"""How ``tvixctl`` shows jobs and events: the ``--json`` shapes and the text forms.

The JSON shapes are a stable interface for scripts (documented in
docs/tvixctl.md); they are built here and nowhere else:

* a **job**: ``{"id", "state", "source", "keep_going", "created_unix_ms",
  "updated_unix_ms", "counts", "outputs", "error", "last_seq"}`` — ``state``
  and the keys of ``counts`` are lower-case state names (``"succeeded"``,
  ``"done"``, ``"dependency_failed"``); ``source`` is ``{"nix_file": path,
  "attr_paths": [...], "args": {name: {"expr"|"str": value}}}`` or
  ``{"drv_paths": [...]}``; ``outputs`` is a list of ``{"drv_path",
  "output", "path", "attr_path"}`` in the order of the requested attribute
  paths (for a failed or cancelled job: only the outputs it built);
* an **event** (one JSON object per line in ``watch --json``): ``{"seq",
  "job_id", "time_unix_ms", "type", ...}`` with ``type`` ``"job_state"``
  (``state``, ``error``), ``"derivation_state"`` (``drv_path``, ``state``,
  ``attempt``, ``detail``) or ``"log"`` (``drv_path``, ``attempt``,
  ``line``: text, invalid UTF-8 as ``\\xNN``).
"""

from __future__ import annotations

import time
from typing import Any

import betterproto

from clients.tvixctl.events import Event
from proto.gen.tvixd import v1 as pb

__all__ = [
    "counts_text",
    "drv_name",
    "drv_state_name",
    "event_json",
    "job_json",
    "job_row",
    "job_state_name",
    "line_text",
    "oneof",
    "source_text",
]

_DRV_PREFIX = "DERIVATION_STATE_"


def oneof(message: Any, group: str) -> tuple[str, Any]:
    """The field set in the oneof ``group`` of ``message`` and its value (``("", None)``: none).

    ``message`` is a generated message or a :class:`clients.tvixctl.events.Event` (group
    ``"event"``).
    """
    if isinstance(message, Event) and group == "event":
        return message.which, message.body
    which, value = betterproto.which_one_of(message, group)
    return which, value


def job_state_name(state: Any) -> str:
    """``JobState.SUCCEEDED`` → ``"succeeded"``."""
    return str(pb.JobState(state).name).lower()


def drv_state_name(state: Any) -> str:
    """``DerivationState.DEPENDENCY_FAILED`` → ``"dependency_failed"``."""
    return str(pb.DerivationState(state).name).lower()


def counts_of(job: Any) -> dict[str, int]:
    """``Job.counts`` with lower-case state names as keys (``"DERIVATION_STATE_DONE"`` → ``"done"``)."""
    return {
        key.removeprefix(_DRV_PREFIX).lower(): int(value)
        for key, value in sorted(job.counts.items())
    }


def drv_name(drv_path: str) -> str:
    """``/nix/store/<hash>-hello-1.0.drv`` → ``hello-1.0`` (the path itself when it is not one)."""
    base = drv_path.rsplit("/", 1)[-1]
    _, sep, name = base.partition("-")
    return name.removesuffix(".drv") if sep and name else drv_path


def line_text(line: bytes) -> str:
    """A log line as text: UTF-8, anything else as ``\\xNN``; no trailing newline."""
    return bytes(line).rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")


def _source_json(request: Any) -> dict[str, Any]:
    which, source = oneof(request, "source")
    if which == "nix_file":
        args: dict[str, dict[str, str]] = {}
        for arg in source.args:
            kind, value = oneof(arg, "value")
            args[arg.name] = {kind or "expr": value or ""}
        return {"nix_file": source.path, "attr_paths": list(source.attr_paths), "args": args}
    if which == "drv_paths":
        return {"drv_paths": list(source.paths)}
    return {}


def job_json(job: Any) -> dict[str, Any]:
    """The JSON form of a ``Job`` (see the module docstring)."""
    return {
        "id": job.id,
        "state": job_state_name(job.state),
        "source": _source_json(job.request),
        "keep_going": bool(job.request.keep_going),
        "created_unix_ms": int(job.created_unix_ms),
        "updated_unix_ms": int(job.updated_unix_ms),
        "counts": counts_of(job),
        "outputs": [
            {
                "drv_path": o.drv_path,
                "output": o.output_name,
                "path": o.path,
                "attr_path": o.attr_path,
            }
            for o in job.outputs
        ],
        "error": job.error,
        "last_seq": int(job.last_seq),
    }


def event_json(event: Any) -> dict[str, Any]:
    """The JSON form of a ``JobEvent`` (see the module docstring)."""
    out: dict[str, Any] = {
        "seq": int(event.seq),
        "job_id": event.job_id,
        "time_unix_ms": int(event.time_unix_ms),
    }
    which, body = oneof(event, "event")
    out["type"] = which
    if which == "job_state":
        out.update(state=job_state_name(body.state), error=body.error)
    elif which == "derivation_state":
        out.update(
            drv_path=body.drv_path,
            state=drv_state_name(body.state),
            attempt=int(body.attempt),
            detail=body.detail,
        )
    elif which == "log":
        out.update(drv_path=body.drv_path, attempt=int(body.attempt), line=line_text(body.line))
    return out


def source_text(request: Any) -> str:
    """What a job builds, as a command line would say it: ``file.nix -A a -A b`` or the .drv paths."""
    source = _source_json(request)
    if "nix_file" in source:
        parts = [source["nix_file"], *(f"-A {a}" for a in source["attr_paths"])]
        for name, value in source["args"].items():
            flag = "--argstr" if "str" in value else "--arg"
            parts.append(f"{flag} {name} {next(iter(value.values()))!r}")
        return " ".join(parts)
    paths: list[str] = source.get("drv_paths", [])
    if len(paths) <= 2:
        return " ".join(paths)
    return f"{paths[0]} and {len(paths) - 1} more .drv paths"


def _when(unix_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_ms / 1000))


def counts_text(job: Any) -> str:
    """``3 done, 1 build, 2 waiting`` (``-`` when there are none yet)."""
    return ", ".join(f"{n} {state}" for state, n in counts_of(job).items()) or "-"


def job_row(job: Any) -> tuple[str, str, str, str, str]:
    """The columns of ``tvixctl jobs``: id, state, created, derivation counts, source."""
    return (
        job.id,
        job_state_name(job.state),
        _when(int(job.created_unix_ms)),
        counts_text(job),
        source_text(job.request),
    )
