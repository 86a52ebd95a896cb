"""Checking build outputs on disk: reference scan and the fixed-output hash.

:func:`inspect_output` streams an output's NAR once through nixcompat's
:class:`~nixcompat.refscan.RefScanner` (exactly Nix's ``scanForReferences``:
file contents, symlink targets and names all count) and, for a recursive
fixed output, through the declared hash; a flat fixed output must be a
non-executable regular file and its contents are hashed.  Nothing is
followed: the output itself may be a symlink.

Which outputs are fixed: a BuildRequest carries no hash field, so
:func:`fixed_output_of` reads what a Nix fixed-output derivation always
carries — a request with network access and exactly one output whose
environment (or structured attrs file ``build/.attrs.json``) has
``outputHash`` (with ``outputHashAlgo`` / ``outputHashMode``).  Other
requests are not hash-checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clients.build.model import BuildRequest
from clients.errors import InvalidRequest
from clients.store.ingest_common import READ_FLAGS
from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.nar import NarError, NarWriter, write_path
from nixcompat.refscan import RefScanner

__all__ = [
    "SMALL_OUTPUT",
    "Checked",
    "FixedOutput",
    "OutputCheck",
    "SmallOutput",
    "check_outputs",
    "fixed_output_of",
    "hash_mismatch",
    "inspect_output",
    "read_small",
]

_CHUNK = 1 << 20
SMALL_OUTPUT = 1 << 20
"""Outputs that are a regular file up to this size, or a symlink, are read whole (:func:`read_small`)."""
_ATTRS_JSON = "build/.attrs.json"


@dataclass(frozen=True)
class FixedOutput:
    """The declared content hash of a fixed output: of its NAR (recursive) or its contents (flat)."""

    hash: NixHash
    recursive: bool


@dataclass(frozen=True)
class OutputCheck:
    """What :func:`inspect_output` found: needle indexes, and the output's hash when fixed."""

    needles: frozenset[int]
    hash: NixHash | None = None


def _declared(request: BuildRequest) -> dict[str, Any]:
    env = request.env()
    if "outputHash" in env:
        return {
            k: v.decode("utf-8", "replace") for k, v in env.items() if k.startswith("outputHash")
        }
    for f in request.additional_files:
        if f.path == _ATTRS_JSON:
            try:
                attrs = json.loads(f.contents)
            except ValueError as exc:
                raise InvalidRequest(f"{_ATTRS_JSON} is not JSON: {exc}") from exc
            if isinstance(attrs, dict):
                return {k: v for k, v in attrs.items() if k.startswith("outputHash")}
    return {}


def fixed_output_of(request: BuildRequest) -> FixedOutput | None:
    """The declared hash of a fixed-output request (see the module docstring), else None."""
    if not request.constraints.network_access or len(request.outputs) != 1:
        return None
    declared = _declared(request)
    value = declared.get("outputHash")
    if not isinstance(value, str) or not value:
        return None
    algo_name = declared.get("outputHashAlgo") or ""
    mode = declared.get("outputHashMode") or "flat"
    if mode not in ("flat", "recursive"):
        raise InvalidRequest(f"outputHashMode {mode!r} is not supported (flat or recursive)")
    try:
        algo = HashAlgo.parse(algo_name) if isinstance(algo_name, str) and algo_name else None
        return FixedOutput(NixHash.parse(value, algo), mode == "recursive")
    except NixCompatError as exc:
        raise InvalidRequest(
            f"bad outputHash {value!r} / outputHashAlgo {algo_name!r}: {exc}"
        ) from exc


def hash_mismatch(output: str, wanted: NixHash, got: NixHash) -> str:
    """Nix's message for a fixed-output hash mismatch (naming the output path, not the drv)."""
    return (
        f"hash mismatch in fixed-output derivation '{output}':\n"
        f"  specified: {wanted.to_sri()}\n"
        f"     got:    {got.to_sri()}"
    )


def _flat_hash(path: str, algo: HashAlgo) -> NixHash:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_mode & stat.S_IXUSR:
        raise InvalidRequest(
            f"output path '{path}' should be a non-executable regular file since recursive "
            "hashing is not enabled (outputHashMode=flat)"
        )
    hasher = hashlib.new(algo.value)
    fd = os.open(path, READ_FLAGS)
    with open(fd, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return NixHash(algo, hasher.digest())


@dataclass(frozen=True)
class SmallOutput:
    """An output that is a small regular file (``contents``) or a symlink (``target``)."""

    contents: bytes | None = None
    executable: bool = False
    target: bytes | None = None


def read_small(path: str) -> SmallOutput | None:
    """The output at ``path`` if it is a symlink or a regular file of at most :data:`SMALL_OUTPUT`.

    Blocking.  Executable means the owner's ``x`` bit, as in a NAR.  None
    for anything else (a directory, a big file: ingest those as trees).
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return SmallOutput(target=os.readlink(os.fsencode(path)))
    if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_OUTPUT:
        return None
    fd = os.open(path, READ_FLAGS)
    with open(fd, "rb", buffering=0) as f:
        contents = f.read(SMALL_OUTPUT + 1)
    if len(contents) > SMALL_OUTPUT:
        return None
    return SmallOutput(contents=contents, executable=bool(st.st_mode & stat.S_IXUSR))


def inspect_output(
    path: str, needles: Sequence[str], fixed: FixedOutput | None = None
) -> OutputCheck:
    """Scan the output at ``path`` for ``needles``; hash it when ``fixed`` (blocking).

    A flat fixed output that is not a non-executable regular file raises
    :class:`InvalidRequest` with Nix's message.
    """
    scanner = RefScanner(needles)
    nar_hasher = hashlib.new(fixed.hash.algo.value) if fixed and fixed.recursive else None

    def sink(data: bytes | bytearray | memoryview) -> None:
        scanner.feed(data)
        if nar_hasher is not None:
            nar_hasher.update(data)

    if needles or nar_hasher is not None:
        writer = NarWriter(sink)
        write_path(path, writer, buffer=bytearray(_CHUNK), chunk_size=_CHUNK)
        writer.finish()
    got: NixHash | None = None
    if fixed is not None:
        if nar_hasher is not None:
            got = NixHash(fixed.hash.algo, nar_hasher.digest())
        else:
            got = _flat_hash(path, fixed.hash.algo)
    return OutputCheck(frozenset(scanner.found), got)


Checked = tuple[OutputCheck, SmallOutput | None] | InvalidRequest | NarError | None
"""One output's result in :func:`check_outputs`."""


def check_outputs(
    hosts: list[str], needles: Sequence[str], fixed: FixedOutput | None
) -> tuple[int | None, list[Checked]]:
    """:func:`inspect_output` and :func:`read_small` of every output, in one call (blocking: one
    worker-thread trip per build).

    The index of the first output that does not exist (then nothing is
    checked), and per output what :func:`inspect_output` found with its
    contents if small (:func:`read_small`), or the error refusing it (the
    outputs after a refused one are not checked: None).
    """
    checks: list[Checked] = [None] * len(hosts)
    for i, host in enumerate(hosts):
        if not os.path.lexists(host):
            return i, checks
    for i, host in enumerate(hosts):
        try:
            checks[i] = (inspect_output(host, needles, fixed), read_small(host))
        except (InvalidRequest, NarError) as exc:
            checks[i] = exc
            break
    return None, checks
