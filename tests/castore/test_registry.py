"""The URL table: which URLs open which backend, and which are rejected (and why)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.errors import InvalidRequest
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.castore.registry import blob_service_from_url, directory_service_from_url

BLOB_ACCEPTED = [
    ("memory://", MemoryBlobService),
    ("objectstore+file://{tmp}/blobs", ObjectStoreBlobService),
    ("objectstore+file://{tmp}/blobs/", ObjectStoreBlobService),
    ("objectstore+file://{tmp}/with%20space", ObjectStoreBlobService),
    ("grpc+unix://{tmp}/castore.sock", GrpcBlobService),
    ("grpc+http://localhost:8000", GrpcBlobService),
    ("grpc+http://127.0.0.1:1/", GrpcBlobService),
    ("grpc+http://[::1]:8000", GrpcBlobService),
]

BLOB_REJECTED = [
    ("", "is not a URL"),
    ("memory", "is not a URL"),
    ("memory:///x", "takes no host or path"),
    ("memory://host", "takes no host or path"),
    ("memory://?x=1", "no query"),
    ("sqlite://{tmp}/d.db", "unsupported scheme 'sqlite'"),
    ("http://host:80", "unsupported scheme 'http'"),
    ("objectstore+file://relative/dir", "three slashes"),
    ("objectstore+file://", "needs an absolute path"),
    ("objectstore+file:///", "must not be the root"),
    ("objectstore+file://{tmp}/b?fanout=3", "no query"),
    ("grpc+unix://relative.sock", "takes no host"),
    ("grpc+unix://", "absolute socket path"),
    ("grpc+unix://{tmp}/dir/", "absolute socket path"),
    ("grpc+http://localhost", "needs host:port"),
    ("grpc+http://:8000", "needs host:port"),
    ("grpc+http://localhost:99999", "Port out of range"),
    ("grpc+http://localhost:80/path", "takes no path"),
    ("grpc+http://user@localhost:80", "credentials"),
    ("grpc+https://localhost:443", "unsupported scheme 'grpc+https'"),
]

DIRECTORY_ACCEPTED = [
    ("memory://", MemoryDirectoryService),
    ("sqlite://{tmp}/directories.db", SqliteDirectoryService),
    ("sqlite://{tmp}/new/sub/directories.db", SqliteDirectoryService),
    ("grpc+unix://{tmp}/castore.sock", GrpcDirectoryService),
    ("grpc+http://localhost:8000", GrpcDirectoryService),
]

DIRECTORY_REJECTED = [
    ("objectstore+file://{tmp}/blobs", "unsupported scheme 'objectstore+file'"),
    ("memory://x", "takes no host or path"),
    ("sqlite://", "needs an absolute path"),
    ("sqlite:///", "must not be the root"),
    ("sqlite://{tmp}/dir/", "needs a file path"),
    ("sqlite://host/x.db", "three slashes"),
    ("sqlite://{tmp}/x.db?mode=ro", "no query"),
    ("sqlite:relative.db", "is not a URL"),
    ("grpc+http://localhost", "needs host:port"),
]


def _url(template: str, tmp: Path) -> str:
    return template.replace("{tmp}", str(tmp))


@pytest.mark.asyncio
@pytest.mark.parametrize(("template", "kind"), BLOB_ACCEPTED, ids=[t for t, _ in BLOB_ACCEPTED])
async def test_blob_urls_accepted(template: str, kind: type, tmp_path: Path) -> None:
    service = await blob_service_from_url(_url(template, tmp_path))
    try:
        assert type(service) is kind
        assert type(service).__name__ in repr(service)
    finally:
        await service.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("template", "fragment"), BLOB_REJECTED, ids=[t or "empty" for t, _ in BLOB_REJECTED]
)
async def test_blob_urls_rejected(template: str, fragment: str, tmp_path: Path) -> None:
    url = _url(template, tmp_path)
    with pytest.raises(InvalidRequest) as excinfo:
        await blob_service_from_url(url)
    assert fragment in str(excinfo.value)
    assert repr(url) in str(excinfo.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("template", "kind"), DIRECTORY_ACCEPTED, ids=[t for t, _ in DIRECTORY_ACCEPTED]
)
async def test_directory_urls_accepted(template: str, kind: type, tmp_path: Path) -> None:
    service = await directory_service_from_url(_url(template, tmp_path))
    try:
        assert type(service) is kind
        assert type(service).__name__ in repr(service)
    finally:
        await service.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("template", "fragment"), DIRECTORY_REJECTED, ids=[t for t, _ in DIRECTORY_REJECTED]
)
async def test_directory_urls_rejected(template: str, fragment: str, tmp_path: Path) -> None:
    url = _url(template, tmp_path)
    with pytest.raises(InvalidRequest) as excinfo:
        await directory_service_from_url(url)
    assert fragment in str(excinfo.value)
    assert repr(url) in str(excinfo.value)


@pytest.mark.asyncio
async def test_objectstore_url_decodes_percent_escapes(tmp_path: Path) -> None:
    service = await blob_service_from_url(f"objectstore+file://{tmp_path}/with%20space")
    assert isinstance(service, ObjectStoreBlobService)
    assert (tmp_path / "with space" / "tmp").is_dir()
