"""Nix's ed25519 keys and signatures (``nix key generate-secret``, ``Sig:`` lines).

All three types are written ``<name>:<base64>`` (standard alphabet, with
padding):

* a secret key file holds 64 bytes, the ed25519 seed followed by the public
  key (libsodium's layout, as ``nix key generate-secret`` writes it);
* a public key (``trusted-public-keys``) holds the 32-byte public key;
* a signature holds the 64-byte ed25519 signature of a fingerprint (for store
  paths, :meth:`nixcompat.narinfo.NarInfo.fingerprint`).

Parsing is strict (tvix's rules, which the vectors follow): the name must be
non-empty and contain no ``:``, whitespace or control characters; the base64
must be canonical, padded, and decode to exactly the right number of bytes.
Nix's own decoder is laxer (it accepts missing padding).

Verification follows Nix: a signature only counts when its key name equals
the verifying key's name *and* the ed25519 check passes.  Error messages
never contain secret key material.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature as _BadEd25519Signature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from nixcompat.errors import NixCompatError

__all__ = [
    "InvalidKey",
    "InvalidSignature",
    "Signature",
    "SigningKey",
    "VerifyingKey",
    "verify_any",
]

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SECRET_KEY_SIZE = SEED_SIZE + PUBLIC_KEY_SIZE
SIGNATURE_SIZE = 64


class InvalidKey(NixCompatError):
    """A secret or public key that is not in Nix's ``name:base64`` form."""


class InvalidSignature(NixCompatError):
    """A signature that is not in Nix's ``name:base64`` form."""


def _check_name(name: str, what: str, error: type[NixCompatError]) -> None:
    if not name:
        raise error(f"{what} has an empty key name")
    bad = [c for c in name if c == ":" or c.isspace() or not c.isprintable()]
    if bad:
        raise error(f"{what} key name {name!r} contains the forbidden character {bad[0]!r}")


def _split(s: str | bytes, what: str, error: type[NixCompatError], secret: bool) -> tuple[str, str]:
    """Split ``name:base64``; never echoes the base64 part when ``secret``."""
    if isinstance(s, bytes):
        try:
            s = s.decode("ascii")
        except UnicodeDecodeError:
            raise error(f"{what} is not ASCII") from None
    name, colon, data = s.partition(":")
    if not colon:
        shown = "" if secret else f" {s!r}"
        raise error(f"{what}{shown} has no key name (expected '<name>:<base64>')")
    _check_name(name, what, error)
    return name, data


def _decode(
    data: str, size: int, what: str, name: str, error: type[NixCompatError], secret: bool
) -> bytes:
    shown = "" if secret else f" {data!r}"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} {name!r}: invalid base64{shown}") from None
    if base64.b64encode(raw).decode("ascii") != data:
        raise error(f"{what} {name!r}: non-canonical base64{shown}")
    if len(raw) != size:
        raise error(f"{what} {name!r}: decodes to {len(raw)} bytes, expected {size}")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _message(fingerprint: bytes | str) -> bytes:
    return fingerprint.encode("utf-8") if isinstance(fingerprint, str) else fingerprint


@dataclass(frozen=True)
class Signature:
    """A named ed25519 signature: ``name`` is the signing key's name, ``data`` 64 bytes."""

    name: str
    data: bytes

    def __post_init__(self) -> None:
        _check_name(self.name, "signature", InvalidSignature)
        if len(self.data) != SIGNATURE_SIZE:
            raise InvalidSignature(
                f"signature {self.name!r} has {len(self.data)} bytes, expected {SIGNATURE_SIZE}"
            )

    @classmethod
    def parse(cls, s: str | bytes) -> Signature:
        """Parse ``name:base64`` (a ``Sig:`` value); raises :class:`InvalidSignature`."""
        name, data = _split(s, "signature", InvalidSignature, secret=False)
        return cls(name, _decode(data, SIGNATURE_SIZE, "signature", name, InvalidSignature, False))

    def __str__(self) -> str:
        return f"{self.name}:{_b64(self.data)}"


@dataclass(frozen=True)
class VerifyingKey:
    """A named ed25519 public key (an entry of ``trusted-public-keys``)."""

    name: str
    key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name, "public key", InvalidKey)
        if len(self.key) != PUBLIC_KEY_SIZE:
            raise InvalidKey(
                f"public key {self.name!r} has {len(self.key)} bytes, expected {PUBLIC_KEY_SIZE}"
            )

    @classmethod
    def parse(cls, s: str | bytes) -> VerifyingKey:
        """Parse ``name:base64`` of 32 bytes; raises :class:`InvalidKey`."""
        name, data = _split(s, "public key", InvalidKey, secret=False)
        return cls(name, _decode(data, PUBLIC_KEY_SIZE, "public key", name, InvalidKey, False))

    def verify(self, fingerprint: bytes | str, signature: Signature) -> bool:
        """Whether ``signature`` is by this key over ``fingerprint`` (names must match)."""
        if signature.name != self.name:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(
                signature.data, _message(fingerprint)
            )
        except _BadEd25519Signature:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.name}:{_b64(self.key)}"


@dataclass(frozen=True)
class SigningKey:
    """A named ed25519 secret key.  ``repr`` hides the seed; ``str`` is the key file form."""

    name: str
    seed: bytes = field(repr=False)
    public: bytes = field(init=False)

    def __post_init__(self) -> None:
        _check_name(self.name, "secret key", InvalidKey)
        if len(self.seed) != SEED_SIZE:
            raise InvalidKey(
                f"secret key {self.name!r} has a {len(self.seed)}-byte seed, expected {SEED_SIZE}"
            )
        public = self._private().public_key().public_bytes_raw()
        object.__setattr__(self, "public", public)

    @classmethod
    def parse(cls, s: str | bytes) -> SigningKey:
        """Parse a secret key file (surrounding whitespace ignored); raises :class:`InvalidKey`.

        The 64 bytes are seed || public key; the public half must be the one
        the seed derives, so a corrupted file is detected.
        """
        name, data = _split(s.strip(), "secret key", InvalidKey, secret=True)
        raw = _decode(data, SECRET_KEY_SIZE, "secret key", name, InvalidKey, True)
        key = cls(name, raw[:SEED_SIZE])
        if key.public != raw[SEED_SIZE:]:
            raise InvalidKey(
                f"secret key {name!r}: the public key half does not match the seed "
                f"(stored {_b64(raw[SEED_SIZE:])}, derived {_b64(key.public)})"
            )
        return key

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """A fresh random key, like ``nix key generate-secret --key-name name``."""
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name, seed)

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, public={_b64(self.public)!r})"

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def to_public(self) -> VerifyingKey:
        """The matching public key, like ``nix key convert-secret-to-public``."""
        return VerifyingKey(self.name, self.public)

    def sign(self, fingerprint: bytes | str) -> Signature:
        """The (deterministic) ed25519 signature of ``fingerprint``, named after this key."""
        return Signature(self.name, self._private().sign(_message(fingerprint)))

    def __str__(self) -> str:
        return f"{self.name}:{_b64(self.seed + self.public)}"


def verify_any(
    fingerprint: bytes | str,
    signatures: Iterable[Signature],
    trusted_keys: Iterable[VerifyingKey],
) -> bool:
    """Whether at least one signature verifies with a trusted key of the same name."""
    keys = list(trusted_keys)
    return any(key.verify(fingerprint, sig) for sig in signatures for key in keys)
