"""NAR (Nix ARchive): tree model, streaming writer, reader, restore and hasher.

Byte-exact with Nix 2.8 (``nix-store --dump`` / ``--restore``, ``nix hash
path``); the reader only accepts canonical NARs (tvix's rules).

* :mod:`~nixcompat.nar.model` — :class:`NarRegular`, :class:`NarSymlink`,
  :class:`NarDirectory` (frozen; contents come from a :class:`ChunkSource`),
  :class:`NarError`.
* :mod:`~nixcompat.nar.writer` — :class:`NarWriter`, push-style events to a sink.
* :mod:`~nixcompat.nar.dump` — trees and paths to NAR bytes (iterators and sinks).
* :mod:`~nixcompat.nar.reader` — :func:`read_nar` (streaming), :func:`read_tree`.
* :mod:`~nixcompat.nar.restore` — :func:`restore_nar` to disk.
* :mod:`~nixcompat.nar.hasher` — :class:`NarHasher`, :func:`nar_hash_path`.

Everything is synchronous and thread-safe per call (no shared state), meant
to run in worker threads (``anyio.to_thread.run_sync``) when used from async
code; :class:`NarWriter` can also be driven incrementally from a coroutine.
"""

from __future__ import annotations

from nixcompat.nar.dump import (
    CHUNK_SIZE,
    dump_path,
    nar_bytes,
    nar_chunks,
    nar_from_path,
    write_node,
    write_path,
)
from nixcompat.nar.hasher import NarHasher, nar_hash_node, nar_hash_path
from nixcompat.nar.model import (
    MAX_NAME_LEN,
    MAX_TARGET_LEN,
    BytesContents,
    ChunkSource,
    NarDirectory,
    NarError,
    NarNode,
    NarRegular,
    NarSymlink,
)
from nixcompat.nar.reader import (
    MAX_DEPTH,
    NarEntry,
    NarKind,
    Readable,
    RegularContents,
    read_nar,
    read_tree,
)
from nixcompat.nar.restore import restore_nar
from nixcompat.nar.writer import NarWriter, Sink

__all__ = [
    "CHUNK_SIZE",
    "MAX_DEPTH",
    "MAX_NAME_LEN",
    "MAX_TARGET_LEN",
    "BytesContents",
    "ChunkSource",
    "NarDirectory",
    "NarEntry",
    "NarError",
    "NarHasher",
    "NarKind",
    "NarNode",
    "NarRegular",
    "NarSymlink",
    "NarWriter",
    "Readable",
    "RegularContents",
    "Sink",
    "dump_path",
    "nar_bytes",
    "nar_chunks",
    "nar_from_path",
    "nar_hash_node",
    "nar_hash_path",
    "read_nar",
    "read_tree",
    "restore_nar",
    "write_node",
    "write_path",
]
