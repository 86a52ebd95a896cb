"""Nix hashes: algorithms, the textual forms Nix accepts and prints, XOR folding.

Textual forms (Nix 2.8 ``Hash::parseAny`` / ``parseSRI``):

- ``<algo>:<digest>`` where the digest is hex, nixbase32 or padded base64,
  told apart by length alone (e.g. sha256: 64 / 52 / 44 characters);
- SRI ``<algo>-<base64>``, where the base64 padding may be missing or excessive;
- a bare digest (hex / nixbase32 / base64 by length) only when the algorithm
  is given out of band (like ``outputHashAlgo``).

If the string names an algorithm and one is also given out of band, they must
agree.  Hex digits may be upper or lower case (Nix accepts both); output is
always lower case.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from dataclasses import dataclass

from nixcompat import nixbase32
from nixcompat.errors import NixCompatError

__all__ = ["HashAlgo", "InvalidHash", "NixHash", "compress_hash"]

_HEX = re.compile(r"[0-9a-fA-F]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")


class InvalidHash(NixCompatError):
    """A hash string or digest that is not valid."""


class HashAlgo(enum.Enum):
    """The hash algorithms Nix supports; the value is Nix's name for it."""

    md5 = "md5"
    sha1 = "sha1"
    sha256 = "sha256"
    sha512 = "sha512"

    @property
    def digest_size(self) -> int:
        """Digest length in bytes."""
        return _DIGEST_SIZES[self]

    @classmethod
    def parse(cls, name: str) -> HashAlgo:
        """The algorithm called ``name`` (``"sha256"``); raises :class:`InvalidHash`."""
        try:
            return cls(name)
        except ValueError:
            raise InvalidHash(
                f"unknown hash algorithm {name!r} (expected one of md5, sha1, sha256, sha512)"
            ) from None


_DIGEST_SIZES = {HashAlgo.md5: 16, HashAlgo.sha1: 20, HashAlgo.sha256: 32, HashAlgo.sha512: 64}


def _base64_len(size: int) -> int:
    return (size + 2) // 3 * 4


def _decode_base64(text: str, original: str) -> bytes:
    body = text.rstrip("=")
    if _BASE64.fullmatch(body) is None or len(body) % 4 == 1:
        raise InvalidHash(f"invalid hash {original!r}: {text!r} is not valid base64")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise InvalidHash(f"invalid hash {original!r}: {text!r} is not valid base64") from exc


def _decode_by_length(algo: HashAlgo, text: str, original: str) -> bytes:
    size = algo.digest_size
    if len(text) == size * 2:
        if _HEX.fullmatch(text) is None:
            raise InvalidHash(f"invalid hash {original!r}: {text!r} is not valid hex")
        return bytes.fromhex(text)
    if len(text) == nixbase32.encoded_len(size):
        try:
            return nixbase32.decode(text)
        except nixbase32.Nixbase32Error as exc:
            raise InvalidHash(f"invalid hash {original!r}: {exc}") from exc
    if len(text) == _base64_len(size):
        return _decode_base64(text, original)
    raise InvalidHash(
        f"invalid hash {original!r}: digest {text!r} has length {len(text)}, which is not "
        f"that of a hex, nixbase32 or base64 {algo.value} digest "
        f"({size * 2}, {nixbase32.encoded_len(size)} or {_base64_len(size)})"
    )


@dataclass(frozen=True)
class NixHash:
    """A digest together with its algorithm; ``len(digest) == algo.digest_size``."""

    algo: HashAlgo
    digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.algo, HashAlgo):
            raise InvalidHash(f"hash algorithm must be a HashAlgo, not {self.algo!r}")
        if len(self.digest) != self.algo.digest_size:
            raise InvalidHash(
                f"a {self.algo.value} digest has {self.algo.digest_size} bytes, "
                f"not {len(self.digest)} ({bytes(self.digest).hex()})"
            )

    @classmethod
    def parse(cls, s: str, algo: HashAlgo | None = None) -> NixHash:
        """Parse any textual form Nix accepts (see the module docstring).

        ``algo`` is the out-of-band algorithm (like ``outputHashAlgo``); it is
        required for bare digests and must match a prefixed one.
        """
        colon = s.find(":")
        dash = s.find("-") if colon < 0 else -1
        sep = colon if colon >= 0 else dash
        if sep < 0:
            if algo is None:
                raise InvalidHash(
                    f"invalid hash {s!r}: a bare digest needs an algorithm "
                    "(write '<algo>:<digest>' or SRI '<algo>-<base64>')"
                )
            return cls(algo, _decode_by_length(algo, s, s))
        try:
            named = HashAlgo.parse(s[:sep])
        except InvalidHash as exc:
            raise InvalidHash(f"invalid hash {s!r}: {exc}") from None
        if algo is not None and algo is not named:
            raise InvalidHash(
                f"invalid hash {s!r}: expected a {algo.value} hash, got {named.value}"
            )
        rest = s[sep + 1 :]
        if colon >= 0:
            return cls(named, _decode_by_length(named, rest, s))
        digest = _decode_base64(rest, s)
        if len(digest) != named.digest_size:
            raise InvalidHash(
                f"invalid SRI hash {s!r}: the digest has {len(digest)} bytes, "
                f"a {named.value} digest has {named.digest_size}"
            )
        return cls(named, digest)

    @classmethod
    def compute(cls, algo: HashAlgo, data: bytes) -> NixHash:
        """The ``algo`` hash of ``data``."""
        return cls(algo, hashlib.new(algo.value, data).digest())

    def to_hex(self) -> str:
        """Bare lower-case hex digest."""
        return self.digest.hex()

    def to_nixbase32(self) -> str:
        """Bare nixbase32 digest."""
        return nixbase32.encode(self.digest)

    def to_base64(self) -> str:
        """Bare padded base64 digest."""
        return base64.b64encode(self.digest).decode("ascii")

    def to_sri(self) -> str:
        """SRI form, ``sha256-<base64>``."""
        return f"{self.algo.value}-{self.to_base64()}"

    def to_nix_string(self) -> str:
        """Nix's default form, ``sha256:<nixbase32>``."""
        return f"{self.algo.value}:{self.to_nixbase32()}"

    def to_hex_string(self) -> str:
        """``sha256:<hex>``, the form used in store path fingerprints."""
        return f"{self.algo.value}:{self.to_hex()}"

    def __str__(self) -> str:
        return self.to_nix_string()


def compress_hash(digest: bytes, size: int) -> bytes:
    """Nix's ``compressHash``: XOR-fold ``digest`` into ``size`` bytes.

    Byte ``i`` of the input is XORed into byte ``i % size`` of the output.
    """
    if size <= 0:
        raise InvalidHash(f"cannot compress a hash to {size} bytes")
    out = bytearray(size)
    for i, byte in enumerate(digest):
        out[i % size] ^= byte
    return bytes(out)
