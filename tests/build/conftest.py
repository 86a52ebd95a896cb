"""Fixtures: a memory castore with busybox in it, and a real OCI builder (runc) over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from nixcompat.storepath import StorePath
from tests.build.helpers import Store, make_busybox_tree
from tests.conftest import require_tool
from tvixd.build.oci.service import OciBuildService
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService


@pytest.fixture(scope="session")
def busybox_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory ``busybox/bin/busybox`` (Debian's static busybox)."""
    return make_busybox_tree(tmp_path_factory.mktemp("bb"))


@pytest_asyncio.fixture
async def store(busybox_tree: Path) -> Store:
    """A memory castore holding busybox (as ``nix-store --add`` would name it)."""
    store = Store(MemoryBlobService(), MemoryDirectoryService())
    await store.add_tree(busybox_tree, "busybox")
    return store


@pytest.fixture
def busybox(store: Store) -> StorePath:
    (path,) = (p for p in store.nodes if p.name == "busybox")
    return path


@pytest_asyncio.fixture
async def builder(tmp_path: Path, store: Store) -> AsyncIterator[OciBuildService]:
    """A real OCI builder with its state in ``tmp_path/state``."""
    require_tool("runc")
    service = await OciBuildService.open(tmp_path / "state", store.blobs, store.directories)
    yield service
    await service.close()
