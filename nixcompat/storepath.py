"""Store paths: parsing, printing, ordering and Nix's path-construction rules.

A store path is ``/nix/store/<hash>-<name>``: ``<hash>`` is 20 bytes in
nixbase32 (32 characters), ``<name>`` is 1 to 211 characters from
``A-Za-z0-9+-._?=`` (tvix's rules, which Nix 2.8 also follows except that it
does not insist on the ``-`` after the hash).

Store paths order by their basename string, i.e. by the nixbase32 hash part
and then the name; this is the order Nix uses in reference sets and the
order in which references enter a path's fingerprint.

The builders implement Nix 2.8's ``makeStorePath`` family: the path digest is
``compress_hash(sha256("<type>:sha256:<inner hex>:/nix/store:<name>"), 20)``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from nixcompat import nixbase32
from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash, compress_hash

__all__ = [
    "STORE_DIR",
    "InvalidStorePath",
    "StorePath",
    "hash_placeholder",
    "is_absolute_store_path",
    "is_valid_name",
    "make_fixed_output_path",
    "make_output_path",
    "make_store_path",
    "make_text_path",
    "output_path_name",
    "split_absolute_path",
]

STORE_DIR = "/nix/store"
"""The only store directory supported."""

DIGEST_SIZE = 20
"""Bytes in a store path's digest."""

HASH_PART_LEN = nixbase32.encoded_len(DIGEST_SIZE)
"""Characters in a store path's hash part (32)."""

MAX_NAME_LEN = 211
"""The longest name Nix allows."""

_PREFIX = STORE_DIR + "/"
_NAME = re.compile(r"[A-Za-z0-9+\-._?=]{1,%d}" % MAX_NAME_LEN)  # noqa: UP031
_ABSOLUTE = re.compile(
    r"%s[0-9a-df-np-sv-z]{%d}-[A-Za-z0-9+\-._?=]{1,%d}"  # noqa: UP031
    % (re.escape(_PREFIX), HASH_PART_LEN, MAX_NAME_LEN)
)


class InvalidStorePath(NixCompatError):
    """A string that is not a valid store path (or a bad store path component)."""


def _check_name(name: object, context: str) -> None:
    if not isinstance(name, str):
        raise InvalidStorePath(f"a store path name must be a str, got {name!r}")
    if _NAME.fullmatch(name) is not None:
        return
    if not name:
        raise InvalidStorePath(f"invalid store path {context!r}: the name is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidStorePath(
            f"invalid store path {context!r}: the name is {len(name)} characters long "
            f"(at most {MAX_NAME_LEN} allowed)"
        )
    bad = next(c for c in name if _NAME.fullmatch(c) is None)
    raise InvalidStorePath(
        f"invalid store path {context!r}: the name contains the illegal character {bad!r}"
    )


@functools.total_ordering
@dataclass(frozen=True, order=False)
class StorePath:
    """A store path: a 20-byte digest and a validated name.

    Equality and hashing use ``(digest, name)``; ordering is by basename.
    """

    digest: bytes
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise InvalidStorePath(
                f"a store path digest must be {DIGEST_SIZE} bytes, got {self.digest!r}"
            )
        if not isinstance(self.name, str) or _NAME.fullmatch(self.name) is None:
            _check_name(self.name, f"{nixbase32.encode(self.digest)}-{self.name}")

    @classmethod
    def parse_basename(cls, s: str) -> StorePath:
        """Parse ``<nixbase32>-<name>`` (no store directory, nothing after the name)."""
        if len(s) < HASH_PART_LEN + 1:
            raise InvalidStorePath(f"invalid store path {s!r}: too short")
        if s[HASH_PART_LEN] != "-":
            raise InvalidStorePath(
                f"invalid store path {s!r}: expected '-' after the {HASH_PART_LEN}-character hash"
            )
        try:
            digest = nixbase32.decode(s[:HASH_PART_LEN])
        except nixbase32.Nixbase32Error as exc:
            raise InvalidStorePath(f"invalid store path {s!r}: bad hash part: {exc}") from None
        path = cls(digest, s[HASH_PART_LEN + 1 :])
        path.__dict__["hash_part"] = s[:HASH_PART_LEN]  # prefill the cache: s is canonical
        return path

    @classmethod
    def from_absolute_path(cls, s: str) -> StorePath:
        """Parse ``/nix/store/<nixbase32>-<name>`` exactly (no trailing components)."""
        if not s.startswith(_PREFIX):
            raise InvalidStorePath(f"invalid store path {s!r}: does not start with {_PREFIX!r}")
        return cls.parse_basename(s[len(_PREFIX) :])

    @functools.cached_property
    def hash_part(self) -> str:
        """The nixbase32 digest (32 characters)."""
        return nixbase32.encode(self.digest)

    @property
    def basename(self) -> str:
        """``<nixbase32>-<name>``."""
        return f"{self.hash_part}-{self.name}"

    @property
    def absolute(self) -> str:
        """``/nix/store/<nixbase32>-<name>``."""
        return f"{_PREFIX}{self.hash_part}-{self.name}"

    @property
    def is_derivation(self) -> bool:
        """Whether the name ends in ``.drv``."""
        return self.name.endswith(".drv")

    def __str__(self) -> str:
        return self.absolute

    def __repr__(self) -> str:
        return f"StorePath({self.absolute!r})"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, StorePath):
            return NotImplemented
        return (self.hash_part, self.name) < (other.hash_part, other.name)


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a valid store path name (1-211 of ``A-Za-z0-9+-._?=``)."""
    return _NAME.fullmatch(name) is not None


def is_absolute_store_path(s: str) -> bool:
    """Whether ``StorePath.from_absolute_path(s)`` would succeed (one regex, no objects)."""
    return _ABSOLUTE.fullmatch(s) is not None


def split_absolute_path(s: str) -> tuple[StorePath, str]:
    """Split ``/nix/store/<basename>[/<rest>]`` into the store path and ``<rest>``.

    A single trailing ``/`` after the basename gives an empty rest.
    """
    if not s.startswith(_PREFIX):
        raise InvalidStorePath(f"invalid store path {s!r}: does not start with {_PREFIX!r}")
    basename, _, rest = s[len(_PREFIX) :].partition("/")
    return StorePath.parse_basename(basename), rest


def make_store_path(type_: str, inner_sha256: bytes, name: str) -> StorePath:
    """Nix's ``makeStorePath``: the path for a fingerprint type, inner sha256 and name."""
    if len(inner_sha256) != HashAlgo.sha256.digest_size:
        raise InvalidStorePath(
            f"the inner hash of a store path must be a 32-byte sha256, got {inner_sha256.hex()}"
        )
    fingerprint = f"{type_}:sha256:{inner_sha256.hex()}:{STORE_DIR}:{name}"
    _check_name(name, f"{_PREFIX}<hash>-{name}")
    digest = compress_hash(hashlib.sha256(fingerprint.encode()).digest(), DIGEST_SIZE)
    return StorePath(digest, name)


def _as_store_path(p: StorePath | str) -> StorePath:
    return p if isinstance(p, StorePath) else StorePath.from_absolute_path(p)


def _make_type(type_: str, references: Iterable[StorePath | str], self_reference: bool) -> str:
    parts = [type_]
    parts.extend(str(r) for r in sorted({_as_store_path(r) for r in references}))
    if self_reference:
        parts.append("self")
    return ":".join(parts)


def make_text_path(
    name: str, content: bytes, references: Iterable[StorePath | str] = ()
) -> StorePath:
    """The path of ``builtins.toFile name content`` (or a ``.drv``) with these references."""
    inner = hashlib.sha256(content).digest()
    return make_store_path(_make_type("text", references, False), inner, name)


def make_fixed_output_path(
    name: str,
    hash: NixHash,
    recursive: bool,
    references: Iterable[StorePath | str] = (),
    self_reference: bool = False,
) -> StorePath:
    """Nix's ``makeFixedOutputPath``: a content-addressed path.

    Recursive sha256 is the ``source`` type (which may have references and a
    self reference); everything else is ``output:out`` over the fingerprint
    ``fixed:out:[r:]<algo>:<hex>:``, and may not have references.
    """
    if hash.algo is HashAlgo.sha256 and recursive:
        return make_store_path(_make_type("source", references, self_reference), hash.digest, name)
    refs = list(references)
    if refs or self_reference:
        raise InvalidStorePath(
            f"a fixed-output path for {name!r} ({'recursive' if recursive else 'flat'} "
            f"{hash.algo.value}) cannot have references; only recursive sha256 can"
        )
    method = "r:" if recursive else ""
    inner = hashlib.sha256(f"fixed:out:{method}{hash.to_hex_string()}:".encode()).digest()
    return make_store_path("output:out", inner, name)


def output_path_name(drv_name: str, output_name: str) -> str:
    """The name of output ``output_name`` of a derivation called ``drv_name``."""
    return drv_name if output_name == "out" else f"{drv_name}-{output_name}"


def make_output_path(drv_name: str, output_name: str, hash_modulo: bytes) -> StorePath:
    """Nix's ``makeOutputPath``: an input-addressed output from the drv's hash modulo."""
    return make_store_path(
        f"output:{output_name}", hash_modulo, output_path_name(drv_name, output_name)
    )


def hash_placeholder(output_name: str) -> str:
    """``builtins.placeholder output_name``: ``/<nixbase32 sha256("nix-output:<name>")>``."""
    return "/" + nixbase32.encode(hashlib.sha256(f"nix-output:{output_name}".encode()).digest())
