"""The coordinator's domain types, as the journal stores them and the API shows them.

* A :class:`JobSpec` is what a user asked for: a Nix file with attribute
  paths and arguments, or ``.drv`` store paths, and ``keep_going``.
  :meth:`JobSpec.validate` enforces the request limits (:data:`LIMITS`);
  its JSON form (:meth:`JobSpec.to_json` / :meth:`JobSpec.from_json`) is what
  the ``jobs`` table keeps.
* A :class:`JobEvent` is one entry of a job's event log: a job state change,
  a derivation state change or a build log line, numbered by ``seq``
  (strictly increasing per job, starting at 1, without gaps).
* A :class:`JobInfo` is a job as ``GetJob`` / ``ListJobs`` answer it.

Wire types (``proto.gen.tvixd.v1``) never appear here; ``tvixd.api``
converts in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from clients.errors import InvalidRequest
from fsm import DrvState, JobState
from tvixd.eval.protocol import NixArg

__all__ = [
    "LIMITS",
    "DerivationStateChanged",
    "DrvPathsSource",
    "EventBody",
    "JobEvent",
    "JobInfo",
    "JobOutput",
    "JobSpec",
    "JobStateChanged",
    "Limits",
    "LogLine",
    "NixFileSource",
    "StoredLogLine",
]


@dataclass(frozen=True)
class Limits:
    """How large a job request may be; anything above is ``InvalidRequest``."""

    max_request_bytes: int = 1 << 20
    max_attr_paths: int = 1000
    max_drv_paths: int = 1000
    max_args: int = 256
    max_string: int = 4096
    """Longest path, attribute path or argument name (characters)."""
    max_arg_value: int = 64 << 10
    """Longest argument value (characters)."""


LIMITS = Limits()


@dataclass(frozen=True)
class NixFileSource:
    """Evaluate ``path`` (absolute, on the daemon's machine) and realise ``attr_paths``."""

    path: str
    attr_paths: tuple[str, ...] = ()
    args: tuple[NixArg, ...] = ()


@dataclass(frozen=True)
class DrvPathsSource:
    """Realise these ``/nix/store/…drv`` paths (``…drv!out`` selects one output)."""

    paths: tuple[str, ...]


def _check_string(value: str, what: str, limit: int) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidRequest(
            f"{what} is {len(value)} characters long (at most {limit}): {value[:80]!r}…"
        )
    if "\0" in value:
        raise InvalidRequest(f"{what} {value[:80]!r} contains NUL")


def _check_count(items: tuple[Any, ...], what: str, limit: int) -> None:
    if len(items) > limit:
        raise InvalidRequest(f"too many {what}: {len(items)} (at most {limit})")


@dataclass(frozen=True)
class JobSpec:
    """A job request: its source and whether to keep going after a failure."""

    source: NixFileSource | DrvPathsSource
    keep_going: bool = False

    def validate(self, limits: Limits = LIMITS) -> None:
        """Check shapes and limits; ``InvalidRequest`` names the field and the value."""
        source = self.source
        if isinstance(source, NixFileSource):
            _check_string(source.path, "nix_file.path", limits.max_string)
            if not source.path.startswith("/"):
                raise InvalidRequest(f"nix_file.path must be absolute, got {source.path!r}")
            _check_count(source.attr_paths, "attribute paths", limits.max_attr_paths)
            for i, attr in enumerate(source.attr_paths):
                _check_string(attr, f"nix_file.attr_paths[{i}]", limits.max_string)
                if not attr:
                    raise InvalidRequest(f"nix_file.attr_paths[{i}] is empty")
            _check_count(source.args, "arguments", limits.max_args)
            for i, arg in enumerate(source.args):
                _check_string(arg.name, f"nix_file.args[{i}].name", limits.max_string)
                if not arg.name:
                    raise InvalidRequest(f"nix_file.args[{i}].name is empty")
                _check_string(arg.value, f"nix_file.args[{i}] ({arg.name})", limits.max_arg_value)
        elif isinstance(source, DrvPathsSource):
            if not source.paths:
                raise InvalidRequest("drv_paths.paths is empty: name at least one .drv path")
            _check_count(source.paths, "derivation paths", limits.max_drv_paths)
            for i, path in enumerate(source.paths):
                _check_string(path, f"drv_paths.paths[{i}]", limits.max_string)
        else:
            raise InvalidRequest("the request names neither a Nix file nor .drv paths")

    def to_json(self) -> str:
        """The JSON form the journal stores."""
        source = self.source
        data: dict[str, Any]
        if isinstance(source, NixFileSource):
            data = {
                "nix_file": {
                    "path": source.path,
                    "attr_paths": list(source.attr_paths),
                    "args": [[a.name, a.value, a.is_string] for a in source.args],
                }
            }
        else:
            data = {"drv_paths": list(source.paths)}
        data["keep_going"] = self.keep_going
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Inverse of :meth:`to_json`; ``ValueError`` for anything else."""
        data = json.loads(text)
        keep_going = bool(data["keep_going"])
        if "nix_file" in data:
            nix = data["nix_file"]
            return cls(
                NixFileSource(
                    path=str(nix["path"]),
                    attr_paths=tuple(str(a) for a in nix["attr_paths"]),
                    args=tuple(NixArg(str(n), str(v), bool(s)) for n, v, s in nix["args"]),
                ),
                keep_going,
            )
        if "drv_paths" in data:
            return cls(DrvPathsSource(tuple(str(p) for p in data["drv_paths"])), keep_going)
        raise ValueError(f"job spec {text[:200]!r} names neither nix_file nor drv_paths")


@dataclass(frozen=True)
class JobOutput:
    """One output a job realises: the derivation, the output name and its store path.

    ``attr_path`` is the attribute path it was asked for by (``""``: the file's
    value, or a ``.drv`` path); it is not part of equality, so an output two
    attributes evaluate to is listed once, under the first.
    """

    drv_path: str
    output_name: str
    path: str
    attr_path: str = field(default="", compare=False)


def in_request_order(outputs: Iterable[JobOutput], spec: JobSpec) -> tuple[JobOutput, ...]:
    """``outputs`` (unique) in the order ``spec`` names their attribute paths.

    Evaluation streams, so roots arrive in the order their evaluations finish;
    this is the order ``nix-build -A a -A b`` would list them.  Outputs of one
    attribute, and those not named by an attribute path, keep their order.
    """
    unique = tuple(dict.fromkeys(outputs))
    source = spec.source
    if not isinstance(source, NixFileSource) or len(source.attr_paths) < 2:
        return unique
    rank = {attr: i for i, attr in reversed(list(enumerate(source.attr_paths)))}
    return tuple(sorted(unique, key=lambda o: rank.get(o.attr_path, len(rank))))


@dataclass(frozen=True)
class JobStateChanged:
    """The job entered ``state``; ``error`` says why when it failed or was cancelled."""

    state: JobState
    error: str = ""


@dataclass(frozen=True)
class DerivationStateChanged:
    """A derivation the job needs entered ``state`` (``detail``: its failure reason, if any)."""

    drv_path: str
    state: DrvState
    attempt: int = 0
    detail: str = ""


@dataclass(frozen=True)
class LogLine:
    """One line (without its newline) of the build log of ``drv_path``, attempt ``attempt``."""

    drv_path: str
    line: bytes
    attempt: int


EventBody = JobStateChanged | DerivationStateChanged | LogLine


@dataclass(frozen=True)
class JobEvent:
    """Entry ``seq`` (1, 2, … without gaps) of job ``job_id``'s event log."""

    seq: int
    job_id: str
    time_ms: int
    body: EventBody

    @property
    def is_final(self) -> bool:
        """Whether this is the job's last event (its transition into a final state)."""
        return isinstance(self.body, JobStateChanged) and self.body.state in (
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
        )


@dataclass(frozen=True)
class StoredLogLine:
    """A line of a derivation's stored build log; ``id`` orders every stored line."""

    id: int
    line: LogLine


@dataclass(frozen=True)
class JobInfo:
    """A job as the API shows it.

    ``counts`` maps ``DrvState`` values (``"build"``, ``"done"``, …) to the
    number of the job's derivations in that state (states with none are
    left out); ``error`` is the failure reason of a failed or cancelled job.
    """

    id: str
    state: JobState
    spec: JobSpec
    created_ms: int
    updated_ms: int
    last_seq: int
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    outputs: tuple[JobOutput, ...] = ()
    error: str = ""
