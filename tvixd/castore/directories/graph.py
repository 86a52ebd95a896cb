"""What local directory backends share: put-stream validation and breadth-first walks.

:class:`ValidatingPutter` implements ``DirectoryPutter`` on top of two
callbacks a backend provides — the size of an already stored directory, and
an atomic commit of a validated list — so every local backend enforces the
same rules with the same messages.  :class:`LocalDirectoryService` is the
rest of ``DirectoryService`` (recursive gets, puts) built on a backend's
``get``, ``_stored_size`` and ``_commit``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType

from clients.castore.model import B3Digest, Directory
from clients.errors import InvalidRequest, StorageError

#: The size (``Directory.size()``) of a stored directory, or None when absent.
StoredSize = Callable[[B3Digest], Awaitable[int | None]]
#: Store validated directories (leaves first) atomically: all of them or none.
Commit = Callable[[Sequence[Directory]], Awaitable[None]]
#: A stored directory, or None when absent.
Fetch = Callable[[B3Digest], Awaitable[Directory | None]]


class ClosureValidator:
    """Checks one put stream, directory by directory, then as a whole.

    Per directory (``add``): ``Directory.validate()``; every child directory
    was sent earlier in the stream or is already stored; its size is the
    child's real size.  As a whole (``finish``): not empty; every directory
    sent is reachable from the root, the last one sent.  Directories sent
    twice are kept once.  Holds the stream in memory until ``finish``.
    """

    def __init__(self, stored_size: StoredSize) -> None:
        self._stored_size = stored_size
        self._received: dict[B3Digest, Directory] = {}
        self._stored: dict[B3Digest, int] = {}
        self._last: B3Digest | None = None

    async def _child_size(self, digest: B3Digest) -> int | None:
        received = self._received.get(digest)
        if received is not None:
            return received.size()
        if digest not in self._stored:
            size = await self._stored_size(digest)
            if size is None:
                return None
            self._stored[digest] = size
        return self._stored[digest]

    async def add(self, directory: Directory) -> B3Digest:
        directory.validate()
        digest = directory.digest()
        for child in directory.directories:
            child_digest = B3Digest(child.digest)
            size = await self._child_size(child_digest)
            if size is None:
                raise InvalidRequest(
                    f"directory entry {child.name!r} refers to directory {child_digest}, which "
                    f"was neither sent earlier in the stream nor is stored "
                    f"(in directory {digest.short()})"
                )
            if size != child.size:
                raise InvalidRequest(
                    f"directory entry {child.name!r} has size {child.size}, but directory "
                    f"{child_digest.short()} has size {size} (in directory {digest.short()})"
                )
        self._received.setdefault(digest, directory)
        self._last = digest
        return digest

    def finish(self) -> tuple[B3Digest, list[Directory]]:
        """The root digest and the distinct directories, leaves first."""
        if self._last is None:
            raise InvalidRequest("the put stream contains no directories")
        root = self._last
        reachable = {root}
        queue = deque([root])
        while queue:
            for child in self._received[queue.popleft()].directories:
                child_digest = B3Digest(child.digest)
                if child_digest in self._received and child_digest not in reachable:
                    reachable.add(child_digest)
                    queue.append(child_digest)
        for digest in self._received:
            if digest not in reachable:
                raise InvalidRequest(
                    f"directory {digest} was sent but is not reachable from the root "
                    f"{root} (the last directory of the stream)"
                )
        return root, list(self._received.values())


class ValidatingPutter:
    """``DirectoryPutter`` for local backends: validate with :class:`ClosureValidator`, then commit.

    After the first error the putter is failed and refuses further use; it
    stores nothing unless ``close`` succeeds.
    """

    def __init__(self, stored_size: StoredSize, commit: Commit, *, label: str) -> None:
        self._validator = ClosureValidator(stored_size)
        self._commit = commit
        self._label = label
        self._state = "open"

    def __repr__(self) -> str:
        return f"<ValidatingPutter into {self._label} ({self._state})>"

    def _require_open(self) -> None:
        if self._state != "open":
            raise InvalidRequest(f"{self!r} cannot be used any more")

    async def put(self, directory: Directory) -> None:
        self._require_open()
        try:
            await self._validator.add(directory)
        except BaseException:
            self._state = "failed"
            raise

    async def close(self) -> B3Digest:
        self._require_open()
        self._state = "failed"
        root, directories = self._validator.finish()
        await self._commit(directories)
        self._state = "closed"
        return root

    async def __aenter__(self) -> ValidatingPutter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self._state = "aborted"


async def breadth_first(fetch: Fetch, root: B3Digest) -> AsyncIterator[Directory]:
    """``root`` then every directory below it, breadth-first, each once; nothing if absent.

    Only the frontier's digests are held, never the whole graph.  A child
    missing from the store raises ``StorageError``.
    """
    directory = await fetch(root)
    if directory is None:
        return
    seen = {root}
    queue: deque[tuple[B3Digest, B3Digest, bytes]] = deque()
    while True:
        yield directory
        for child in directory.directories:
            child_digest = B3Digest(child.digest)
            if child_digest not in seen:
                seen.add(child_digest)
                queue.append((child_digest, directory.digest(), child.name))
        if not queue:
            return
        digest, parent, name = queue.popleft()
        found = await fetch(digest)
        if found is None:
            raise StorageError(
                f"directory {parent} refers to {name!r} = directory {digest}, "
                f"which is missing from the store"
            )
        directory = found


class LocalDirectoryService(ABC):
    """``get_recursive``, ``put`` and ``put_multiple`` for a local backend.

    The backend provides ``get`` (a stored directory or None),
    ``_stored_size`` (:data:`StoredSize`) and ``_commit`` (:data:`Commit`);
    puts go through :class:`ValidatingPutter` (labelled with the backend's
    ``repr``), recursive gets through :func:`breadth_first` over ``get``.
    """

    @abstractmethod
    async def get(self, digest: bytes) -> Directory | None:
        """The directory stored under ``digest``, or None."""

    @abstractmethod
    async def _stored_size(self, digest: B3Digest) -> int | None:
        """``Directory.size()`` of the stored directory, or None when absent."""

    @abstractmethod
    async def _commit(self, directories: Sequence[Directory]) -> None:
        """Store validated directories (leaves first) atomically."""

    async def get_recursive(self, root: bytes) -> AsyncIterator[Directory]:
        async for directory in breadth_first(self.get, B3Digest(root)):
            yield directory

    async def put(self, directory: Directory) -> B3Digest:
        async with self.put_multiple() as putter:
            await putter.put(directory)
            return await putter.close()

    def put_multiple(self) -> ValidatingPutter:
        return ValidatingPutter(self._stored_size, self._commit, label=repr(self))
