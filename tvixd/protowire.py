"""Protobuf wire-format pieces for the few messages tvixd encodes by hand.

betterproto 2.0.0b7 costs 0.1 to 0.5 ms per message; the hot messages (job
events in ``tvixd.api``, path infos in the SQLite path-info store) are
written directly, byte-identical to betterproto (tests compare both).
:class:`Encoded` hands such bytes (or bytes read from storage, as the path-info
``Get`` does) to grpclib as a message, so they are sent without re-encoding.
"""

from __future__ import annotations

from typing import Self

__all__ = ["Encoded", "varint"]

_UINT64 = (1 << 64) - 1
_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))
"""The one-byte varints, made once: most numbers and lengths in these messages are below 128."""


def varint(value: int) -> bytes:
    """The protobuf varint of ``value`` (a negative one as int64: ten bytes)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= _UINT64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Encoded:
    """A message already encoded: grpclib's codec checks its type, then calls ``SerializeToString``.

    Subclass it together with the generated message class it stands for
    (``class EncodedPathInfo(Encoded, store_pb.PathInfo)``), so the codec's
    ``isinstance`` check passes.  Made with :meth:`of`, which skips
    betterproto's (costly) initialisation: its fields are never set, so
    nothing but the codec may use these objects; the bytes are sent as given,
    unchecked, so the caller vouches that they are a valid encoding.
    """

    _encoded: bytes

    @classmethod
    def of(cls, data: bytes) -> Self:
        """The message whose encoding is ``data``."""
        message = object.__new__(cls)
        object.__setattr__(message, "_encoded", data)
        return message

    def SerializeToString(self) -> bytes:  # the protobuf API's name
        return self._encoded

    def __bytes__(self) -> bytes:
        return self._encoded

    def __repr__(self) -> str:
        return f"{type(self).__name__}.of(<{len(self._encoded)} bytes>)"
