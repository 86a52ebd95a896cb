"""Castore backends by URL: composition is configuration, not code.

==========================  ===================================================
URL                         backend
==========================  ===================================================
``memory://``               blobs / directories in memory
``objectstore+file:///d``   blobs: one file per blob under ``/d`` (blobs only)
``sqlite:///p/file.db``     directories: a SQLite file (directories only)
``grpc+unix:///p.sock``     the gRPC adapter over a unix socket
``grpc+http://host:port``   the gRPC adapter over plaintext TCP
==========================  ===================================================

Each backend checks the rest of its own URL; an unknown scheme or a bad shape
raises ``InvalidRequest`` quoting the URL (:func:`pick_backend`, which the
path-info, build and evaluator registries use too).  The constructors are async because
opening a backend does I/O (creating directories, opening a database).  The
caller owns the returned service and must ``await service.close()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, TypeVar

from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.castore.directories.sqlite import SqliteDirectoryService

__all__ = ["blob_service_from_url", "directory_service_from_url", "pick_backend"]

_F = TypeVar("_F")


async def _grpc_blobs(url: str) -> BlobService:
    return GrpcBlobService.from_url(url)


async def _grpc_directories(url: str) -> DirectoryService:
    return GrpcDirectoryService.from_url(url)


_BLOB_BACKENDS: Mapping[str, Callable[[str], Awaitable[BlobService]]] = {
    "memory": MemoryBlobService.from_url,
    "objectstore+file": ObjectStoreBlobService.from_url,
    "grpc+unix": _grpc_blobs,
    "grpc+http": _grpc_blobs,
}

_DIRECTORY_BACKENDS: Mapping[str, Callable[[str], Awaitable[DirectoryService]]] = {
    "memory": MemoryDirectoryService.from_url,
    "sqlite": SqliteDirectoryService.from_url,
    "grpc+unix": _grpc_directories,
    "grpc+http": _grpc_directories,
}


def pick_backend(
    kind: str,
    url: object,
    backends: Mapping[str, _F],
    *,
    noun: str | None = None,
    bare: Literal["not a URL", "unsupported"] = "not a URL",
) -> _F:
    """The constructor ``backends`` has for the scheme of ``url`` (``scheme://...``).

    ``InvalidRequest`` naming the service and quoting the URL when it is not
    a string, has no ``://`` or has a scheme ``backends`` lacks (the message
    lists the supported ones).  The service is named ``"<kind> service"``
    (``"blob service URL 'ftp://x': ..."``), or ``noun`` when given
    (``"evaluator"``).  ``bare="unsupported"`` reports a URL without ``://``
    as an unsupported scheme instead of as not a URL (the build registry's
    wording).  Every registry of tvixd dispatches through this function.
    """
    what = noun if noun is not None else f"{kind} service"
    if not isinstance(url, str):
        article = "an" if what[:1] in "aeiou" else "a"
        raise InvalidRequest(f"{article} {what} URL is a string, got {type(url).__name__}")
    supported = ", ".join(f"{s}://" for s in backends)
    scheme, sep, _ = url.partition("://")
    if not sep:
        if bare == "unsupported":
            raise InvalidRequest(f"{what} URL {url!r}: unsupported scheme (supported: {supported})")
        raise InvalidRequest(f"{what} URL {url!r} is not a URL (expected scheme://...)")
    factory = backends.get(scheme)
    if factory is None:
        raise InvalidRequest(
            f"{what} URL {url!r}: unsupported scheme {scheme!r} (supported: {supported})"
        )
    return factory


async def blob_service_from_url(url: str) -> BlobService:
    """Open the blob service ``url`` names."""
    return await pick_backend("blob", url, _BLOB_BACKENDS)(url)


async def directory_service_from_url(url: str) -> DirectoryService:
    """Open the directory service ``url`` names."""
    return await pick_backend("directory", url, _DIRECTORY_BACKENDS)(url)
