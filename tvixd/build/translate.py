"""Translating a Nix derivation into a BuildRequest (PROTOCOL.md; upstream ``glue/src/tvix_build.rs``).

* ``command_args``: the builder, then the arguments.
* Environment: Nix's fixed sandbox variables (:data:`NIX_ENVIRONMENT_VARS`,
  upstream's values: ``NIX_BUILD_TOP=/``, ``NIX_BUILD_CORES`` as given),
  overlaid by the derivation's env.  ``passAsFile`` (split on whitespace like
  Nix; names without a variable are ignored) moves each named variable into
  ``build/.attr-<nixbase32(sha256(name))>`` and sets ``<name>Path``.  With
  structured attrs (``__json``) the derivation's env is *not* passed (Nix
  2.8 behaviour): ``build/.attrs.json`` and ``build/.attrs.sh`` are written
  (:mod:`tvixd.build.structured`) and ``NIX_ATTRS_JSON_FILE`` /
  ``NIX_ATTRS_SH_FILE`` point at them.
* Hash placeholders (``builtins.placeholder "out"``) in the arguments, the
  environment and those files are replaced by the output paths, as Nix does
  at build time.
* ``working_dir`` ``build``; ``scratch_paths`` ``build`` and ``nix/store``;
  ``inputs_dir`` ``nix/store``; outputs = output paths without the leading
  ``/``, sorted; inputs = the given nodes named after their store path
  basenames, sorted; network access only for a fixed-output derivation;
  ``/bin/sh`` provided.
* Refscan needles: the hash parts of the output paths (by output name), of
  the input sources and of the input derivations' ``.drv`` paths — exactly
  upstream's list — followed, unless ``upstream_needles``, by the hash parts
  of every other input path, so that references to the outputs of input
  derivations are found as Nix finds them.  :func:`refscan_candidates` gives
  the store path behind each needle, to map ``Build.outputs_needles`` back;
  :func:`translate` gives the request and those paths in one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from clients.build.model import (
    AdditionalFile,
    BuildConstraints,
    BuildRequest,
    sorted_env,
)
from clients.castore.model import Node
from clients.errors import InvalidRequest
from clients.store.model import with_name
from nixcompat import nixbase32
from nixcompat.derivation import Derivation
from nixcompat.storepath import STORE_DIR, StorePath, hash_placeholder
from tvixd.build.structured import attrs_files

__all__ = [
    "BUILD_DIR",
    "NIX_ENVIRONMENT_VARS",
    "Translation",
    "derivation_to_build_request",
    "pass_as_file_path",
    "refscan_candidates",
    "translate",
]

BUILD_DIR = "/build"
"""The build directory inside the sandbox (Nix's ``sandbox-build-dir``)."""

NIX_ENVIRONMENT_VARS: Mapping[str, str] = {
    "HOME": "/homeless-shelter",
    "NIX_BUILD_CORES": "0",
    "NIX_BUILD_TOP": "/",
    "NIX_LOG_FD": "2",
    "NIX_STORE": "/nix/store",
    "PATH": "/path-not-set",
    "PWD": BUILD_DIR,
    "TEMP": BUILD_DIR,
    "TEMPDIR": BUILD_DIR,
    "TERM": "xterm-256color",
    "TMP": BUILD_DIR,
    "TMPDIR": BUILD_DIR,
}
"""The sandbox variables upstream Tvix sets (``NIX_BUILD_CORES`` is overridable)."""

_WHITESPACE = " \t\n\r"
_PREFIX = STORE_DIR + "/"
_PREFIX_LEN = len(_PREFIX)


def pass_as_file_path(name: str) -> str:
    """Where ``passAsFile`` puts variable ``name``: ``/build/.attr-<nixbase32(sha256(name))>``."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
    return f"{BUILD_DIR}/.attr-{nixbase32.encode(digest)}"


def _store_path(value: StorePath | str) -> StorePath:
    if type(value) is StorePath:  # the common case first: no parsing
        return value
    if isinstance(value, StorePath):
        return value
    if value.startswith("/"):
        return StorePath.from_absolute_path(value)
    return StorePath.parse_basename(value)


def _known(value: str, inputs: Mapping[str, StorePath]) -> StorePath:
    """``value`` parsed, or the equal path among ``inputs`` (by basename) without parsing."""
    if value.startswith(_PREFIX):
        found = inputs.get(value[_PREFIX_LEN:])
        if found is not None:
            return found
    return _store_path(value)


def refscan_candidates(
    drv: Derivation,
    inputs: Iterable[StorePath | str] = (),
    *,
    upstream_needles: bool = False,
) -> tuple[StorePath, ...]:
    """The store path behind each refscan needle, in needle order (see the module docstring)."""
    by_name = {path.basename: path for path in map(_store_path, inputs)}
    return _candidates(drv, by_name, upstream_needles)


def _candidates(
    drv: Derivation, inputs: Mapping[str, StorePath], upstream_needles: bool
) -> tuple[StorePath, ...]:
    """:func:`refscan_candidates` with the inputs by basename."""
    paths = [_store_path(out.path) for _, out in sorted(drv.outputs.items())]
    # input sources are among the inputs (already parsed): look them up by basename
    paths += [_known(p, inputs) for p in drv.input_sources]
    paths += [_store_path(p) for p in drv.input_derivations]
    if not upstream_needles:
        listed = {path.basename for path in paths}
        # StorePath order is (hash part, name): the basename's order, as the hash part has a
        # fixed length; sorting strings avoids ~n log n calls of StorePath.__lt__
        paths += [inputs[name] for name in sorted(inputs.keys() - listed)]
    return tuple(paths)


def _named(node: Node, name: bytes) -> Node:
    """``node`` called ``name``: itself when it already is (a path info's root node always is)."""
    return node if node.name == name else with_name(node, name)


_COMMON_PLACEHOLDERS: Mapping[str, bytes] = MappingProxyType(
    {name: hash_placeholder(name).encode() for name in ("out", "dev", "bin", "lib", "doc", "man")}
)
"""Placeholders of the usual output names, computed once (a sha256 and nixbase32 each)."""


def _placeholder(name: str) -> bytes:
    found = _COMMON_PLACEHOLDERS.get(name)
    return found if found is not None else hash_placeholder(name).encode()


class _Rewriter:
    """Nix's ``rewriteStrings`` with the output placeholders → output paths."""

    def __init__(self, drv: Derivation) -> None:
        self.pairs = [(_placeholder(n), o.path.encode()) for n, o in drv.outputs.items()]

    def __call__(self, data: bytes) -> bytes:
        for old, new in self.pairs:
            data = data.replace(old, new)
        return data

    def text(self, value: str) -> str:
        return self(value.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")


def _utf8(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} {value[:80]!r} is not UTF-8: {exc}") from exc


def _environment(
    drv: Derivation, rewrite: _Rewriter, build_cores: int
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    env = {k: v.encode() for k, v in NIX_ENVIRONMENT_VARS.items()}
    env["NIX_BUILD_CORES"] = str(build_cores).encode()
    files: dict[str, bytes] = {}
    structured = drv.structured_attrs
    if structured is not None:
        outputs = {name: out.path for name, out in drv.outputs.items()}
        attrs_json, attrs_sh = attrs_files(structured, outputs)
        for name, data, var in (
            (".attrs.json", attrs_json, "NIX_ATTRS_JSON_FILE"),
            (".attrs.sh", attrs_sh, "NIX_ATTRS_SH_FILE"),
        ):
            files[f"{BUILD_DIR}/{name}"[1:]] = rewrite(data)
            env[var] = f"{BUILD_DIR}/{name}".encode()
        return env, files
    if "exportReferencesGraph" in drv.environment:
        raise InvalidRequest(
            "exportReferencesGraph is not supported (it needs the store's path infos at build time)"
        )
    pass_as_file = set(
        drv.environment.get("passAsFile", b"").decode("utf-8", "surrogateescape").split()
    )
    for key, value in drv.environment.items():
        if key in pass_as_file:
            path = pass_as_file_path(key)
            files[path[1:]] = rewrite(value)
            env[rewrite.text(key + "Path")] = path.encode()
        else:
            env[rewrite.text(key)] = rewrite(value)
    return env, files


@dataclass(frozen=True)
class Translation:
    """A derivation's BuildRequest and the store path behind each of its refscan needles."""

    request: BuildRequest
    candidates: tuple[StorePath, ...]


def derivation_to_build_request(
    drv: Derivation,
    inputs: Mapping[StorePath, Node] | Mapping[str, Node],
    *,
    build_cores: int = 0,
    upstream_needles: bool = False,
) -> BuildRequest:
    """The BuildRequest for ``drv`` (output paths filled in), given its inputs' castore nodes.

    ``inputs`` maps store paths (``StorePath``, absolute paths or basenames)
    to root nodes (any name; they are renamed to the basename).  Pass the
    whole input closure: only what is in ``inputs`` is visible to the build.
    Every input source must be among them.  Raises :class:`InvalidRequest`
    for what cannot be expressed (a non-UTF-8 builder or argument, bad
    ``__json``, ``exportReferencesGraph``, a missing input source).
    """
    return translate(
        drv, inputs, build_cores=build_cores, upstream_needles=upstream_needles
    ).request


def translate(
    drv: Derivation,
    inputs: Mapping[StorePath, Node] | Mapping[str, Node],
    *,
    build_cores: int = 0,
    upstream_needles: bool = False,
) -> Translation:
    """:func:`derivation_to_build_request` and :func:`refscan_candidates` at once.

    The request's ``refscan_needles[i]`` is the hash part of ``candidates[i]``;
    one pass over the inputs serves both (with a closure of hundreds of
    paths, calling the two separately costs twice the work).
    """
    drv.validate()
    paths: dict[str, StorePath] = {}
    nodes: dict[str, Node] = {}
    for p, node in inputs.items():
        path = _store_path(p)
        name = path.basename  # a new string per call: once
        paths[name] = path
        nodes[name] = node
    for src in drv.input_sources:
        if _known(src, paths).basename not in paths:
            raise InvalidRequest(f"input source {src} has no castore node among the inputs")
    rewrite = _Rewriter(drv)
    command_args = [_utf8(drv.builder.encode("utf-8", "surrogateescape"), "builder")]
    command_args += [
        _utf8(rewrite(arg), f"argument {i}") for i, arg in enumerate(drv.arguments, start=1)
    ]
    env, files = _environment(drv, rewrite, build_cores)
    candidates = _candidates(drv, paths, upstream_needles)
    request = BuildRequest(
        command_args=tuple(command_args),
        outputs=tuple(sorted(out.path[1:] for out in drv.outputs.values())),
        constraints=BuildConstraints(
            system=drv.system,
            network_access=drv.is_fixed_output(),
            provide_bin_sh=True,
        ),
        inputs=tuple(_named(nodes[name], name.encode()) for name in sorted(nodes)),
        working_dir=BUILD_DIR[1:],
        scratch_paths=(BUILD_DIR[1:], "nix/store"),
        inputs_dir="nix/store",
        environment_vars=sorted_env(env.items()),
        additional_files=tuple(AdditionalFile(p, c) for p, c in sorted(files.items())),
        refscan_needles=tuple(p.hash_part for p in candidates),
    )
    return Translation(request, candidates)
