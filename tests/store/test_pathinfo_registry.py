"""The path-info URL table: which URLs open which backend, which are rejected (and why)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest
from clients.store.grpc import GrpcPathInfoService
from clients.store.protocols import PathInfoService
from tests.store.pathinfo_helpers import make_info
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.pathinfo.sqlite import SqlitePathInfoService
from tvixd.store.registry import PATH_INFO_BACKENDS, path_info_service_from_url

ACCEPTED = [
    ("memory://", MemoryPathInfoService),
    ("sqlite://{tmp}/pathinfo.db", SqlitePathInfoService),
    ("sqlite://{tmp}/new/sub/pathinfo.db", SqlitePathInfoService),
    ("sqlite://{tmp}/with%20space.db", SqlitePathInfoService),
    ("grpc+unix://{tmp}/store.sock", GrpcPathInfoService),
    ("grpc+http://localhost:8000", GrpcPathInfoService),
    ("grpc+http://[::1]:8000/", GrpcPathInfoService),
]

REJECTED = [
    ("", "is not a URL"),
    ("memory", "is not a URL"),
    ("memory:///x", "takes no host or path"),
    ("memory://?x=1", "no query"),
    ("objectstore+file://{tmp}/b", "unsupported scheme 'objectstore+file'"),
    ("nix+http://cache.nixos.org", "unsupported scheme 'nix+http'"),
    ("sqlite://", "needs an absolute path"),
    ("sqlite:///", "must not be the root"),
    ("sqlite://{tmp}/dir/", "needs a file path"),
    ("sqlite://host/x.db", "three slashes"),
    ("sqlite://{tmp}/x.db?mode=ro", "no query"),
    ("grpc+unix://relative.sock", "takes no host"),
    ("grpc+http://localhost", "needs host:port"),
    ("grpc+http://localhost:80/path", "takes no path"),
    ("grpc+https://localhost:443", "unsupported scheme 'grpc+https'"),
]


def _url(template: str, tmp: Path) -> str:
    return template.replace("{tmp}", str(tmp))


@pytest_asyncio.fixture
async def castore() -> AsyncIterator[tuple[BlobService, DirectoryService]]:
    yield MemoryBlobService(), MemoryDirectoryService()


@pytest.mark.asyncio
@pytest.mark.parametrize(("template", "kind"), ACCEPTED, ids=[t for t, _ in ACCEPTED])
async def test_urls_accepted(
    template: str, kind: type, tmp_path: Path, castore: tuple[BlobService, DirectoryService]
) -> None:
    blobs, directories = castore
    service = await path_info_service_from_url(
        _url(template, tmp_path), blobs=blobs, directories=directories
    )
    try:
        assert type(service) is kind
        assert type(service).__name__ in repr(service)
    finally:
        await service.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("template", "fragment"), REJECTED, ids=[t or "empty" for t, _ in REJECTED]
)
async def test_urls_rejected(
    template: str, fragment: str, tmp_path: Path, castore: tuple[BlobService, DirectoryService]
) -> None:
    blobs, directories = castore
    url = _url(template, tmp_path)
    with pytest.raises(InvalidRequest) as excinfo:
        await path_info_service_from_url(url, blobs=blobs, directories=directories)
    assert fragment in str(excinfo.value)
    assert repr(url) in str(excinfo.value)


@pytest.mark.asyncio
async def test_sqlite_url_decodes_percent_escapes(
    tmp_path: Path, castore: tuple[BlobService, DirectoryService]
) -> None:
    blobs, directories = castore
    service = await path_info_service_from_url(
        f"sqlite://{tmp_path}/with%20space.db", blobs=blobs, directories=directories
    )
    await service.close()
    assert (tmp_path / "with space.db").is_file()


@pytest.mark.asyncio
async def test_backends_are_extensible(castore: tuple[BlobService, DirectoryService]) -> None:
    """A new scheme is one more mapping entry; its constructor gets the castore services."""
    blobs, directories = castore
    seen: list[object] = []

    async def custom(url: str, b: BlobService, d: DirectoryService) -> PathInfoService:
        seen.extend([url, b, d])
        return MemoryPathInfoService()

    backends = {**PATH_INFO_BACKENDS, "custom+x": custom}
    service = await path_info_service_from_url(
        "custom+x://anything", blobs=blobs, directories=directories, backends=backends
    )
    assert seen == ["custom+x://anything", blobs, directories]
    await service.put(make_info("custom"))
    with pytest.raises(InvalidRequest, match="supported: memory://, sqlite://"):
        await path_info_service_from_url("custom+x://", blobs=blobs, directories=directories)
    with pytest.raises(TypeError):
        PATH_INFO_BACKENDS["custom+x"] = custom  # type: ignore[index]
