"""Nix's base-32 encoding ("nixbase32"), as used in store paths and hashes.

Nix reads the input as one little-endian integer and prints it 5 bits at a
time starting with the most significant group, using an alphabet without
``e o t u``.  So the *last* byte of the input decides the *first* characters:
``encode(bytes.fromhex("1f"))`` is ``"0z"``.

Contracts:

- ``encode(data)`` has ``encoded_len(len(data))`` characters.
- ``decode(s)`` accepts exactly the strings ``encode`` produces: the length
  must be ``encoded_len(n)`` for some ``n``, every character must be in
  :data:`ALPHABET` (lower case), and the bits beyond ``8 * n`` in the first
  character must be zero.  Anything else raises :class:`Nixbase32Error`.

Both directions run in C (``int(.., 32)`` and ``base64.b32encode``) rather
than a per-bit Python loop: they are on hot paths (store path parsing).
"""

from __future__ import annotations

import base64
import re

from nixcompat.errors import NixCompatError

__all__ = ["ALPHABET", "Nixbase32Error", "decode", "decoded_len", "encode", "encoded_len"]

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
"""The 32 digits of nixbase32, in value order."""

_RFC4648 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_INT_DIGITS = "0123456789abcdefghijklmnopqrstuv"
_ENCODE_TABLE = str.maketrans(_RFC4648, ALPHABET)
_DECODE_TABLE = str.maketrans(ALPHABET, _INT_DIGITS)
_VALID = re.compile(r"[0-9a-df-np-sv-z]*")


class Nixbase32Error(NixCompatError):
    """A string that is not valid nixbase32."""


def encoded_len(n: int) -> int:
    """The number of nixbase32 characters encoding ``n`` bytes."""
    return (n * 8 + 4) // 5


def decoded_len(n: int) -> int:
    """The number of bytes that ``n`` nixbase32 characters decode to.

    Only meaningful when ``n == encoded_len(decoded_len(n))``; :func:`decode`
    rejects other lengths.
    """
    return n * 5 // 8


def encode(data: bytes) -> str:
    """Encode ``data`` in nixbase32 (Nix's bit order: the bytes reversed)."""
    n_chars = encoded_len(len(data))
    if n_chars == 0:
        return ""
    value = int.from_bytes(data, "little")
    # Pad on the right to a multiple of 40 bits so that RFC 4648 base32 of the
    # big-endian bytes yields exactly our 5-bit groups, most significant first.
    n_groups = -(-n_chars // 8)
    shifted = value << (n_groups * 40 - n_chars * 5)
    rfc = base64.b32encode(shifted.to_bytes(n_groups * 5, "big")).decode("ascii")
    return rfc[:n_chars].translate(_ENCODE_TABLE)


def decode(s: str | bytes) -> bytes:
    """Decode nixbase32 ``s``; raises :class:`Nixbase32Error` when it is not valid."""
    if isinstance(s, bytes | bytearray | memoryview):
        try:
            text = bytes(s).decode("ascii")
        except UnicodeDecodeError:
            raise Nixbase32Error(
                f"invalid nixbase32 {bytes(s)!r}: contains a non-ASCII byte"
            ) from None
    else:
        text = s
    n_bytes = decoded_len(len(text))
    if encoded_len(n_bytes) != len(text):
        raise Nixbase32Error(
            f"invalid nixbase32 {text!r}: length {len(text)} is not the encoding of any byte length"
        )
    if _VALID.fullmatch(text) is None:
        bad = next(c for c in text if c not in ALPHABET)
        raise Nixbase32Error(
            f"invalid nixbase32 {text!r}: character {bad!r} is not in the alphabet {ALPHABET}"
        )
    if not text:
        return b""
    value = int(text.translate(_DECODE_TABLE), 32)
    if value >> (n_bytes * 8):
        raise Nixbase32Error(
            f"invalid nixbase32 {text!r}: non-zero trailing bits in the first character "
            f"(it encodes more than {n_bytes} bytes)"
        )
    return value.to_bytes(n_bytes, "little")
