"""Build services by URL: the accepted and rejected shapes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clients.build.grpc import GrpcBuildService
from clients.build.protocols import BuildService
from clients.errors import InvalidRequest
from tvixd.build.dummy import DummyBuildService
from tvixd.build.oci.service import OciBuildService
from tvixd.build.registry import build_service_from_url
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService

pytestmark = pytest.mark.asyncio


async def open_url(url: str) -> BuildService:
    return await build_service_from_url(
        url, blobs=MemoryBlobService(), directories=MemoryDirectoryService()
    )


async def test_oci_url_with_parameters(tmp_path: Path) -> None:
    url = (
        f"oci://{tmp_path}/state?max_builds=3&timeout=2.5&uid=2000&gid=200&ro_paths=/etc,/usr"
        "&systems=x86_64-linux&sandbox_shell=&nofile=4096&pids_limit=100&link_limit=250"
    )
    service = await open_url(url)
    try:
        assert isinstance(service, OciBuildService)
        assert service.max_builds == 3
        assert service.timeout == 2.5
        assert service.systems == {"x86_64-linux"}
        assert (service.sandbox.uid, service.sandbox.gid) == (2000, 200)
        assert service.sandbox.sandbox_shell is None
        assert (service.sandbox.nofile, service.sandbox.pids_limit) == (4096, 100)
        assert service.config.link_limit == 250
        with pytest.raises(Exception, match="in use by another builder"):
            await open_url(f"oci://{tmp_path}/state")
    finally:
        await service.close()
    default = await open_url(f"oci://{tmp_path}/state")
    assert isinstance(default, OciBuildService)
    assert default.timeout is None
    assert default.max_builds >= 1
    assert default.config.link_limit is None
    await default.close()
    mounted = await open_url(f"oci://{tmp_path}/state?link_limit=0")
    assert isinstance(mounted, OciBuildService)
    assert mounted.config.link_limit == 0
    await mounted.close()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("dummy://", DummyBuildService),
        ("dummy://?fail=all&delay=0.1", DummyBuildService),
        ("grpc+unix:///run/tvixd/build.sock", GrpcBuildService),
        ("grpc+unix:///run/tvixd/build.sock?api=dobuild", GrpcBuildService),
        ("grpc+http://localhost:5000", GrpcBuildService),
    ],
)
async def test_accepted_urls(url: str, kind: type) -> None:
    service = await open_url(url)
    assert isinstance(service, kind)
    await service.close()


async def test_dummy_url_parameters() -> None:
    service = await open_url("dummy://?fail=all&delay=0.25")
    assert isinstance(service, DummyBuildService)
    assert (service.fail_all, service.delay) == (True, 0.25)
    grpc = await open_url("grpc+unix:///x.sock?api=dobuild")
    assert "DoBuild" in repr(grpc)
    await grpc.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "unsupported scheme"),
        ("oci", "unsupported scheme"),
        ("oci://host/state", "three slashes"),
        ("oci:///", "not the root"),
        ("oci:///tmp/x?max_builds=0", "bad value '0' for 'max_builds'"),
        ("oci:///tmp/x?max_builds=two", "bad value 'two' for 'max_builds'"),
        ("oci:///tmp/x?timeout=-1", "bad value '-1' for 'timeout'"),
        ("oci:///tmp/x?uid=-5", "must not be negative"),
        ("oci:///tmp/x?ro_paths=relative", "bad value 'relative' for 'ro_paths'"),
        ("oci:///tmp/x?sandbox_shell=bin/sh", "sandbox_shell must be an absolute path"),
        ("oci:///tmp/x?link_limit=-1", "bad value '-1' for 'link_limit'"),
        ("oci:///tmp/x?link_limit=many", "bad value 'many' for 'link_limit'"),
        ("oci:///tmp/x?colour=blue", "unknown parameters ['colour']"),
        ("oci:///tmp/x?timeout=1&timeout=2", "given twice"),
        ("dummy://host", "takes no host"),
        ("dummy://?fail=sometimes", "bad value 'sometimes' for 'fail'"),
        ("dummy://?delay=-1", "must not be negative"),
        ("grpc+unix://relative.sock", "grpc+unix takes no host"),
        ("grpc+http://host", "needs host:port"),
        ("grpc+http://host:1?api=rest", "bad value 'rest' for 'api'"),
        # unknown schemes: the shared dispatch (tvixd.castore.registry.pick_backend)
        (
            "ftp://x",
            "build service URL 'ftp://x': unsupported scheme 'ftp' "
            "(supported: oci://, dummy://, grpc+unix://, grpc+http://)",
        ),
        ("OCI:///tmp/x", "build service URL 'OCI:///tmp/x': unsupported scheme 'OCI'"),
        ("", "build service URL '': unsupported scheme (supported: oci://, dummy://"),
        ("oci:/tmp/x", "build service URL 'oci:/tmp/x': unsupported scheme (supported: oci://"),
        # bad query parameters, for every scheme that takes some
        ("dummy://?delay", "invalid URL 'dummy://?delay': bad query: bad query field: 'delay'"),
        ("dummy://?delay=1&&", "bad query field: ''"),
        ("dummy://?=1", "invalid URL 'dummy://?=1': unknown parameters ['']"),
        ("dummy://?delay=soon", "bad value 'soon' for 'delay'"),
        ("dummy://?fail=all&fail=all", "parameter 'fail' given twice"),
        ("oci:///tmp/x?max_builds=%zz", "bad value '%zz' for 'max_builds'"),
        ("oci:///tmp/x?runc", "bad query field: 'runc'"),
        ("grpc+unix:///x.sock?api", "invalid URL 'grpc+unix:///x.sock?api': bad query"),
        ("grpc+unix:///x.sock?timeout=3", "unknown parameters ['timeout']"),
    ],
)
async def test_rejected_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        await open_url(url)


@pytest.mark.parametrize("url", [None, 42, b"dummy://"])
async def test_a_url_is_a_string(url: object) -> None:
    with pytest.raises(
        InvalidRequest, match=f"a build service URL is a string, got {type(url).__name__}$"
    ):
        await open_url(url)  # type: ignore[arg-type]
