"""Shared fixtures.  Real tools only: a test that needs Nix or runc requires it."""

from __future__ import annotations

import shutil

import pytest

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
