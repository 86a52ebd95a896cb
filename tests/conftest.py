"""Shared fixtures.  Real tools only: a test that needs Nix or runc requires it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from blockbuster import blockbuster_ctx

from tests.interop import GrpcioProtos, compile_grpcio


def require_tool(name: str) -> str:
    """The path of ``name``; fails (not skips) when missing: ``./dev test`` installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run the suite through ./dev test, which installs it")
    return path


@pytest.fixture(scope="session")
def grpcio_protos(tmp_path_factory: pytest.TempPathFactory) -> GrpcioProtos:
    """Our .proto files compiled by grpcio-tools: an independent implementation (tests/interop.py)."""
    return compile_grpcio(tmp_path_factory.mktemp("grpcio-protos"))


@pytest.fixture(autouse=True)
def no_blocking_in_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """In async tests, a blocking call (file I/O, sleep, sqlite, ...) made on the loop by our code fails.

    Scans only our packages, so library internals (grpclib's sockets) are left alone;
    code that runs in worker threads (anyio.to_thread) is not affected.
    """
    if request.node.get_closest_marker("asyncio") is None:
        yield
        return
    with blockbuster_ctx(["clients", "tvixd", "nixcompat", "fsm"]):
        yield
