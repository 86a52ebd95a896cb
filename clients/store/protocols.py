"""The store service interfaces: path infos, and NAR calculation from castore contents.

Every ``PathInfoService`` backend (memory, sqlite, the gRPC adapter, the
``Cache`` and ``Signing`` wrappers, nix+file) is held to this contract by one
conformance suite (``tests/store``).  Common rules, as for the castore:

* Absent is ``None``, never an exception.
* A store path digest argument is 20 bytes; any other length raises
  :class:`~clients.errors.InvalidRequest` (so does input breaking a rule).
* Backend failures raise :class:`~clients.errors.StorageError`.
* Nothing blocks the event loop; ``close()`` releases resources, is
  idempotent, and the service must not be used afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from clients.castore.model import Node
from clients.store.model import PathInfo


class PathInfoService(Protocol):
    """Path infos, keyed by the 20-byte digest of their store path."""

    async def get(self, digest: bytes) -> PathInfo | None:
        """The path info whose store path has this digest, or None when absent."""
        ...

    async def put(self, info: PathInfo) -> PathInfo:
        """Validate and store ``info``; what was stored (wrappers may add to it, e.g. a signature).

        ``info.validate()`` runs first: an invalid path info raises
        ``InvalidRequest`` and nothing is stored.  A put replaces any path
        info stored under the same digest.  The castore contents the root node
        points to are not checked (the path-info service does not see them).
        """
        ...

    def list(self) -> AsyncIterator[PathInfo]:
        """Every stored path info exactly once, in no particular order, streamed (not loaded whole)."""
        ...

    async def close(self) -> None:
        """Release resources (connections, database handles)."""
        ...


class NarCalculator(Protocol):
    """The NAR serialisation's size and sha256 of castore contents, computed by streaming."""

    async def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """``(nar_size, nar_sha256)`` of the tree ``node`` points to; its name is ignored.

        A NAR does not contain its root's name, so any name gives the same
        result.  Raises ``NotFound`` when a blob or directory below ``node`` is
        absent, ``InvalidRequest`` when ``node`` itself breaks a rule (e.g. a
        digest of the wrong length).
        """
        ...
