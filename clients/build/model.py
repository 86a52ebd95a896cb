"""Build domain types (PROTOCOL.md, tvix.build.v1): requests, constraints, results.

Invariant: a :class:`BuildRequest` that exists is valid.  Construction turns
iterables into tuples, checks Python types and every rule below, raising
:class:`~clients.errors.InvalidRequest` that names the field, the position
and the value:

* paths inside the build (``working_dir``, ``inputs_dir``, ``scratch_paths``,
  ``outputs``, additional file paths) are *clean relative* paths: no leading
  or trailing ``/``, no empty, ``.`` or ``..`` component, no NUL;
  ``working_dir`` and ``inputs_dir`` may be empty (the build root), the others
  may not;
* ``available_ro_paths`` are clean absolute paths;
* ``inputs`` are sorted by name (a castore entry name each: non-empty, no
  ``/``, not ``.`` or ``..``), ``outputs``, ``scratch_paths``,
  ``environment_vars`` (by key), ``additional_files`` (by path) and
  ``available_ro_paths`` are sorted, all strictly (no duplicates);
* ``command_args`` is non-empty; no string holds NUL (it could not reach
  ``execve``); an environment key is non-empty and has no ``=``;
* ``constraints.system`` is non-empty;
* refscan needles are non-empty.

Strings sort by code point, which is the byte order of their UTF-8 encoding,
the order upstream uses.  A :class:`Build` pairs a request with one root node
per output (in the order of ``request.outputs``) and, per output, the sorted
indexes of the needles found in it.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from clients.castore.model import DIGEST_LENGTH, DirectoryNode, FileNode, Node, SymlinkNode
from clients.errors import InvalidRequest
from clients.store.model import check_node

__all__ = [
    "AdditionalFile",
    "Build",
    "BuildConstraints",
    "BuildRequest",
    "EnvVar",
    "check_absolute_path",
    "check_relative_path",
    "sorted_env",
]

UINT64_MAX = (1 << 64) - 1
_NODE_TYPES = (DirectoryNode, FileNode, SymlinkNode)


def _clean_components(path: str, what: str) -> None:
    if "\0" in path:
        raise InvalidRequest(f"{what} {path!r} contains NUL")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidRequest(
                f"{what} {path!r} is not a clean path "
                f"(component {part!r}: no empty, '.' or '..' components, no trailing '/')"
            )


def check_relative_path(path: str, what: str, *, allow_empty: bool = False) -> None:
    """Raise InvalidRequest unless ``path`` is a clean relative path (see the module docstring)."""
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str, got {type(path).__name__}")
    if path == "" and allow_empty:
        return
    if path.startswith("/"):
        raise InvalidRequest(f"{what} {path!r} must be relative (no leading '/')")
    _clean_components(path, what)


def check_absolute_path(path: str, what: str) -> None:
    """Raise InvalidRequest unless ``path`` is a clean absolute path other than ``/``."""
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str, got {type(path).__name__}")
    if not path.startswith("/"):
        raise InvalidRequest(f"{what} {path!r} must be absolute")
    _clean_components(path[1:], what)


def _check_sorted(keys: Sequence[str] | Sequence[bytes], what: str) -> None:
    if all(map(operator.lt, keys[:-1], keys[1:])):  # strictly increasing, at C speed
        return
    for i in range(1, len(keys)):
        if keys[i] == keys[i - 1]:
            raise InvalidRequest(f"{what}: duplicate {keys[i]!r} at position {i}")
        if keys[i] < keys[i - 1]:  # type: ignore[operator]  # one type per sequence
            raise InvalidRequest(
                f"{what} must be sorted: {keys[i]!r} at position {i} comes after {keys[i - 1]!r}"
            )


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if "\0" in value:
        raise InvalidRequest(f"{what} {value[:80]!r} contains NUL")
    return value


def _tuple(owner: object, name: str, kind: type | tuple[type, ...]) -> tuple[object, ...]:
    items = tuple(getattr(owner, name))
    if not all(map(isinstance, items, itertools.repeat(kind))):
        for i, item in enumerate(items):
            if not isinstance(item, kind):
                raise TypeError(
                    f"{type(owner).__name__}.{name}[{i}] has type {type(item).__name__}"
                )
    object.__setattr__(owner, name, items)
    return items


def _plainly_valid(nodes: tuple[Node, ...], names: list[bytes]) -> bool:
    """Whether ``nodes`` (named ``names``) are directories and files with valid names and digests.

    Whole-list operations instead of a check per node (a request carries
    hundreds of inputs); False means: check each node to find the problem.
    """
    joined = b"".join(names)
    if b"/" in joined or b"\0" in joined or not {b"", b".", b".."}.isdisjoint(names):
        return False
    digests = [n.digest for n in nodes if not isinstance(n, SymlinkNode)]
    return len(digests) == len(nodes) and set(map(len, digests)) <= {DIGEST_LENGTH}


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: a key (no ``=``, no NUL) and a value (bytes, no NUL)."""

    key: str
    value: bytes

    def __post_init__(self) -> None:
        _check_str(self.key, "environment variable key")
        if not self.key or "=" in self.key:
            raise InvalidRequest(f"environment variable key {self.key!r} is empty or contains '='")
        if not isinstance(self.value, bytes):
            raise TypeError(f"environment variable value must be bytes, got {type(self.value)}")
        if b"\0" in self.value:
            raise InvalidRequest(f"environment variable {self.key!r} has a value containing NUL")


@dataclass(frozen=True)
class AdditionalFile:
    """A file created (mode 0644, owned by the build user) before the build starts."""

    path: str
    contents: bytes

    def __post_init__(self) -> None:
        check_relative_path(self.path, "additional file path")
        if not isinstance(self.contents, bytes):
            raise TypeError(f"additional file contents must be bytes, got {type(self.contents)}")

    def __repr__(self) -> str:
        return f"AdditionalFile({self.path!r}, {len(self.contents)} bytes)"


@dataclass(frozen=True)
class BuildConstraints:
    """What the build needs from the builder."""

    system: str
    min_memory: int = 0
    available_ro_paths: tuple[str, ...] = ()
    network_access: bool = False
    provide_bin_sh: bool = False

    def __post_init__(self) -> None:
        if not _check_str(self.system, "constraints.system"):
            raise InvalidRequest("constraints.system must not be empty")
        if not isinstance(self.min_memory, int) or isinstance(self.min_memory, bool):
            raise TypeError(f"constraints.min_memory must be int, got {type(self.min_memory)}")
        if not 0 <= self.min_memory <= UINT64_MAX:
            raise InvalidRequest(f"constraints.min_memory {self.min_memory} is not a uint64")
        paths = _tuple(self, "available_ro_paths", str)
        for i, path in enumerate(paths):
            check_absolute_path(str(path), f"constraints.available_ro_paths[{i}]")
        _check_sorted(self.available_ro_paths, "constraints.available_ro_paths")
        for flag in ("network_access", "provide_bin_sh"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"constraints.{flag} must be bool")


@dataclass(frozen=True)
class BuildRequest:
    """A build: see PROTOCOL.md for the fields and the module docstring for the rules."""

    command_args: tuple[str, ...]
    outputs: tuple[str, ...]
    constraints: BuildConstraints
    inputs: tuple[Node, ...] = ()
    working_dir: str = ""
    scratch_paths: tuple[str, ...] = ()
    inputs_dir: str = ""
    environment_vars: tuple[EnvVar, ...] = ()
    additional_files: tuple[AdditionalFile, ...] = ()
    refscan_needles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        args = _tuple(self, "command_args", str)
        if not args or not args[0]:
            raise InvalidRequest(
                "command_args must not be empty (its first element is the program)"
            )
        for i, arg in enumerate(args):
            _check_str(arg, f"command_args[{i}]")
        if not isinstance(self.constraints, BuildConstraints):
            raise TypeError(f"constraints must be BuildConstraints, got {type(self.constraints)}")
        check_relative_path(self.working_dir, "working_dir", allow_empty=True)
        check_relative_path(self.inputs_dir, "inputs_dir", allow_empty=True)
        for name in ("scratch_paths", "outputs"):
            paths = _tuple(self, name, str)
            for i, path in enumerate(paths):
                check_relative_path(str(path), f"{name}[{i}]")
            _check_sorted(getattr(self, name), name)
        self._check_inputs()
        _tuple(self, "environment_vars", EnvVar)
        _check_sorted([e.key for e in self.environment_vars], "environment_vars (by key)")
        _tuple(self, "additional_files", AdditionalFile)
        _check_sorted([f.path for f in self.additional_files], "additional_files (by path)")
        for i, needle in enumerate(_tuple(self, "refscan_needles", str)):
            if not _check_str(needle, f"refscan_needles[{i}]"):
                raise InvalidRequest(f"refscan_needles[{i}] is empty")

    def _check_inputs(self) -> None:
        _tuple(self, "inputs", _NODE_TYPES)
        names = [node.name for node in self.inputs]
        if not _plainly_valid(self.inputs, names):  # find the first problem, and say it
            for i, node in enumerate(self.inputs):
                name = node.name
                if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                    raise InvalidRequest(
                        f"inputs[{i}]: name {name[:80]!r} is not a valid entry name "
                        "(non-empty, no '/' or NUL, not '.' or '..')"
                    )
                check_node(node, f"inputs[{i}]")
        _check_sorted(names, "inputs (by name)")

    def env(self) -> dict[str, bytes]:
        """The environment as a dict (sorted by key)."""
        return {e.key: e.value for e in self.environment_vars}

    def __repr__(self) -> str:
        return (
            f"BuildRequest({' '.join(self.command_args)[:80]!r}, outputs={list(self.outputs)}, "
            f"{len(self.inputs)} inputs)"
        )


@dataclass(frozen=True)
class Build:
    """A successful build: one root node per output, and the needles found in each.

    ``outputs[i]`` is the node of ``request.outputs[i]`` (named after the
    path's last component); ``outputs_needles[i]`` the sorted indexes into
    ``request.refscan_needles`` found in it.
    """

    request: BuildRequest
    outputs: tuple[Node, ...]
    outputs_needles: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.request, BuildRequest):
            raise TypeError(f"Build.request must be a BuildRequest, got {type(self.request)}")
        outputs = _tuple(self, "outputs", _NODE_TYPES)
        needles = tuple(tuple(found) for found in self.outputs_needles)
        object.__setattr__(self, "outputs_needles", needles)
        expected = len(self.request.outputs)
        if len(outputs) != expected or len(needles) != expected:
            raise InvalidRequest(
                f"a Build has one node and one needle list per requested output ({expected}), "
                f"got {len(outputs)} nodes and {len(needles)} needle lists"
            )
        for i, node in enumerate(self.outputs):
            check_node(node, f"outputs[{i}]")
        count = len(self.request.refscan_needles)
        for i, found in enumerate(needles):
            for index in found:
                if not isinstance(index, int) or not 0 <= index < count:
                    raise InvalidRequest(
                        f"outputs_needles[{i}]: index {index!r} is not a needle index (0..{count - 1})"
                    )
            if list(found) != sorted(set(found)):
                raise InvalidRequest(f"outputs_needles[{i}] must be sorted and unique: {found}")

    def needles_of(self, output: int) -> tuple[str, ...]:
        """The needles (strings) found in output number ``output``."""
        return tuple(self.request.refscan_needles[i] for i in self.outputs_needles[output])

    def __repr__(self) -> str:
        return f"Build({self.request!r}, outputs={list(self.outputs)})"


def sorted_env(pairs: Iterable[tuple[str, bytes]]) -> tuple[EnvVar, ...]:
    """``EnvVar`` tuples sorted by key (later pairs win over earlier ones with the same key)."""
    return tuple(EnvVar(k, v) for k, v in sorted(dict(pairs).items()))
