"""Path-info services by URL: composition is configuration, not code.

==========================  ===================================================
URL                         backend
==========================  ===================================================
``memory://``               path infos in memory
``sqlite:///p/file.db``     a SQLite file (table ``path_infos_v1``)
``grpc+unix:///p.sock``     the gRPC adapter over a unix socket
``grpc+http://host:port``   the gRPC adapter over plaintext TCP
==========================  ===================================================

Each backend checks the rest of its own URL; an unknown scheme or a bad shape
raises ``InvalidRequest`` quoting the URL (``tvixd.castore.registry.pick_backend``,
shared with the castore registry).  The caller owns the returned service and
must ``await service.close()``.

Constructors get the URL and the castore services (a backend that ingests
NARs, like ``nix+file://``, writes the contents there; the others ignore
them).  :data:`PATH_INFO_BACKENDS` maps each scheme to its constructor; a
new backend is one more entry in it, or callers pass an extended mapping::

    await path_info_service_from_url(url, blobs=b, directories=d,
                                     backends={**PATH_INFO_BACKENDS, "nix+file": open_nix_file})
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

from clients.castore.protocols import BlobService, DirectoryService
from clients.store.grpc import GrpcPathInfoService
from clients.store.protocols import PathInfoService
from tvixd.castore.registry import pick_backend
from tvixd.store.nixfile import NixFilePathInfoService
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.pathinfo.sqlite import SqlitePathInfoService

PathInfoBackend = Callable[[str, BlobService, DirectoryService], Awaitable[PathInfoService]]
"""``(url, blobs, directories) -> service``: opens the backend a URL names."""


async def _memory(url: str, blobs: BlobService, directories: DirectoryService) -> PathInfoService:
    return await MemoryPathInfoService.from_url(url)


async def _sqlite(url: str, blobs: BlobService, directories: DirectoryService) -> PathInfoService:
    return await SqlitePathInfoService.from_url(url)


async def _grpc(url: str, blobs: BlobService, directories: DirectoryService) -> PathInfoService:
    return GrpcPathInfoService.from_url(url)


PATH_INFO_BACKENDS: Mapping[str, PathInfoBackend] = MappingProxyType(
    {
        "memory": _memory,
        "sqlite": _sqlite,
        "grpc+unix": _grpc,
        "grpc+http": _grpc,
        "nix+file": NixFilePathInfoService.from_url,
    }
)
"""Every backend by URL scheme (read-only; extend by copying, see the module docstring)."""


async def path_info_service_from_url(
    url: str,
    *,
    blobs: BlobService,
    directories: DirectoryService,
    backends: Mapping[str, PathInfoBackend] = PATH_INFO_BACKENDS,
) -> PathInfoService:
    """Open the path-info service ``url`` names, with these castore services at hand."""
    return await pick_backend("path info", url, backends)(url, blobs, directories)
