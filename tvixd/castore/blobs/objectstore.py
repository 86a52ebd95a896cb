"""``objectstore+file:///dir``: one read-only file per blob, ``<dir>/<hex[:2]>/<hex digest>``.

Crash safety: a put streams into ``<dir>/tmp/put-*`` while hashing, then
fsyncs the file, renames it to its digest's name and fsyncs the directory
holding it (and ``<dir>`` when the fan-out directory is new).  A blob's name
therefore only ever refers to its complete contents; a crash leaves at most a
temp file, and temp files older than a day are swept when the store opens.
Reads hash what they read and raise ``StorageError`` at the end of a blob
whose contents no longer match its name (bit rot, tampering).

All file I/O and hashing run on worker threads; each call is not cancellable
once started, so cancellation never tears a write, and a failed or cancelled
put removes its temp file (shielded).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread
import blake3

from clients.castore.model import B3Digest
from clients.castore.streams import CHUNK_SIZE, BlobReader, rechunk
from clients.errors import StorageError
from tvixd.castore.urls import local_path

STALE_TEMP_SECONDS = 24 * 3600


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep(tmp: Path, now: float) -> None:
    for entry in tmp.iterdir():
        if entry.name.startswith("put-") and entry.stat().st_mtime < now - STALE_TEMP_SECONDS:
            entry.unlink(missing_ok=True)


class ObjectStoreBlobService:
    """``BlobService`` keeping each blob in its own file under ``root``."""

    def __init__(self, root: Path) -> None:
        """Use ``open`` (it creates the directories); this does no I/O."""
        self._root = root
        self._tmp = root / "tmp"

    @classmethod
    async def open(cls, root: Path) -> ObjectStoreBlobService:
        service = cls(root)
        try:
            await anyio.to_thread.run_sync(service._prepare)
        except OSError as exc:
            raise StorageError(f"cannot open blob store at {root}: {exc}") from exc
        return service

    @classmethod
    async def from_url(cls, url: str) -> ObjectStoreBlobService:
        return await cls.open(local_path(url, "objectstore+file", directory=True))

    def _prepare(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        _sweep(self._tmp, time.time())

    def __repr__(self) -> str:
        return f"ObjectStoreBlobService({str(self._root)!r})"

    def path(self, digest: bytes) -> Path:
        """Where the blob ``digest`` lives (whether or not it is present)."""
        name = B3Digest(digest).hex()
        return self._root / name[:2] / name

    async def stat(self, digest: bytes) -> int | None:
        path = self.path(digest)
        try:
            result = await anyio.to_thread.run_sync(os.stat, path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat blob {path}: {exc}") from exc
        return result.st_size

    async def has(self, digest: bytes) -> bool:
        return await self.stat(digest) is not None

    async def open_read(self, digest: bytes) -> BlobReader | None:
        d = B3Digest(digest)
        path = self.path(d)
        try:
            file: BinaryIO = await anyio.to_thread.run_sync(open, path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot open blob {path}: {exc}") from exc

        hasher = blake3.blake3()

        def read() -> bytes:
            data = file.read(CHUNK_SIZE)
            hasher.update(data)
            return data

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                try:
                    data = await anyio.to_thread.run_sync(read)
                except OSError as exc:
                    raise StorageError(f"cannot read blob {path}: {exc}") from exc
                if not data:
                    break
                yield data
            if hasher.digest() != d:
                raise StorageError(
                    f"blob file {path} is corrupt: its contents hash to {hasher.hexdigest()}"
                )

        async def close() -> None:
            await anyio.to_thread.run_sync(file.close)

        return BlobReader(chunks(), close, description=str(path))

    async def put(self, chunks: AsyncIterable[bytes]) -> B3Digest:
        try:
            fd, name = await anyio.to_thread.run_sync(
                lambda: tempfile.mkstemp(prefix="put-", dir=self._tmp)
            )
        except OSError as exc:
            raise StorageError(f"cannot create a temp file in {self._tmp}: {exc}") from exc
        temp = Path(name)
        file = os.fdopen(fd, "wb")
        hasher = blake3.blake3()

        def write(data: bytes) -> None:
            file.write(data)
            hasher.update(data)

        committed = False
        try:
            async for piece in rechunk(chunks):
                await anyio.to_thread.run_sync(write, piece)
            digest = B3Digest(hasher.digest())
            await anyio.to_thread.run_sync(self._commit, file, temp, digest)
            committed = True
            return digest
        except OSError as exc:
            raise StorageError(f"cannot store blob via {temp}: {exc}") from exc
        finally:
            if not committed:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await anyio.to_thread.run_sync(self._discard, file, temp)

    def _commit(self, file: BinaryIO, temp: Path, digest: B3Digest) -> None:
        file.flush()
        os.fsync(file.fileno())
        os.fchmod(file.fileno(), 0o444)
        file.close()
        final = self.path(digest)
        if final.exists():
            temp.unlink()
            return
        fan_out = final.parent
        if not fan_out.is_dir():
            fan_out.mkdir(exist_ok=True)
            _fsync_dir(self._root)
        os.replace(temp, final)
        _fsync_dir(fan_out)

    @staticmethod
    def _discard(file: BinaryIO, temp: Path) -> None:
        file.close()
        temp.unlink(missing_ok=True)

    async def close(self) -> None:
        """Nothing held open between calls."""
