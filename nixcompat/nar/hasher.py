"""NAR hash and size in one streaming pass.

:class:`NarHasher` is a sink (``update``) that SHA-256 hashes and counts the
bytes of a NAR.  :func:`nar_hash_path` computes a path's NAR hash without
building the NAR in memory: file contents are read with ``readinto`` into one
reused buffer and handed to ``hashlib`` as ``memoryview`` slices (no copies;
``hashlib`` releases the GIL for large updates, so hashing in worker threads
runs in parallel); only the small framing tokens are concatenated in Python.
The result equals ``nix hash path --type sha256`` / ``sha256(nix-store --dump)``.
"""

from __future__ import annotations

import hashlib
import os

from nixcompat.nar.dump import CHUNK_SIZE, write_node, write_path
from nixcompat.nar.model import NarNode
from nixcompat.nar.writer import NarWriter


class NarHasher:
    """Counts and SHA-256 hashes the bytes written to it."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size = 0

    def __repr__(self) -> str:
        return f"NarHasher(size={self.size})"

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` (used at once, never retained)."""
        self._sha256.update(data)
        self.size += len(data)

    def digest(self) -> bytes:
        """The SHA-256 digest (32 bytes) of everything written so far."""
        return self._sha256.digest()

    def hexdigest(self) -> str:
        """The digest as lowercase hex."""
        return self._sha256.hexdigest()


def nar_hash_path(
    path: str | os.PathLike[str] | bytes, *, chunk_size: int = CHUNK_SIZE
) -> tuple[bytes, int]:
    """``(sha256 digest of the NAR, NAR size)`` of the file-system object at ``path``."""
    hasher = NarHasher()
    writer = NarWriter(hasher.update)
    write_path(path, writer, buffer=bytearray(chunk_size), chunk_size=chunk_size)
    writer.finish()
    return hasher.digest(), hasher.size


def nar_hash_node(node: NarNode) -> tuple[bytes, int]:
    """``(sha256 digest of the NAR, NAR size)`` of an abstract tree."""
    hasher = NarHasher()
    writer = NarWriter(hasher.update)
    write_node(node, writer)
    writer.finish()
    return hasher.digest(), hasher.size
