"""The dummy builder: succeeds or fails on request, runs nothing, can be slow and cancelled."""

from __future__ import annotations

import anyio
import pytest

from clients.build.errors import BuildFailed
from clients.build.model import BuildConstraints, BuildRequest, EnvVar
from clients.castore.model import FileNode
from clients.castore.streams import read_blob
from clients.store.nar import CastoreNarCalculator
from tvixd.build.dummy import FAIL_VARIABLE, DummyBuildService
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService

pytestmark = pytest.mark.asyncio


def request(*env: EnvVar) -> BuildRequest:
    return BuildRequest(
        command_args=("/does/not/exist",),
        outputs=("nix/store/" + "a" * 32 + "-dev", "nix/store/" + "b" * 32 + "-out"),
        constraints=BuildConstraints("any-system"),
        scratch_paths=("nix/store",),
        environment_vars=env,
    )


async def test_success_puts_one_file_per_output() -> None:
    blobs = MemoryBlobService()
    lines: list[bytes] = []

    async def on_log(line: bytes) -> None:
        lines.append(line)

    build = await DummyBuildService(blobs).build(request(), on_log=on_log)
    assert [n.name for n in build.outputs] == [b"a" * 32 + b"-dev", b"b" * 32 + b"-out"]
    for output, node in zip(build.request.outputs, build.outputs, strict=True):
        assert isinstance(node, FileNode)
        assert await read_blob(blobs, node.digest) == f"dummy output /{output}\n".encode()
    assert build.outputs_needles == ((), ())
    assert len(lines) == 1


async def test_outputs_nars_are_remembered_as_rendered() -> None:
    blobs = MemoryBlobService()
    builder = DummyBuildService(blobs)
    build = await builder.build(request())
    calculator = CastoreNarCalculator(blobs, MemoryDirectoryService())
    for node in build.outputs:
        assert builder.nar_memo.get(node) == await calculator.calculate_nar(node)
    assert len(builder.nar_memo) == len(build.outputs)
    unstored = DummyBuildService()  # nothing stored: nothing remembered
    await unstored.build(request())
    assert len(unstored.nar_memo) == 0


async def test_failure_on_request() -> None:
    with pytest.raises(BuildFailed, match="dummy build failed on request: because") as info:
        await DummyBuildService().build(request(EnvVar(FAIL_VARIABLE, b"because")))
    assert info.value.exit_code == 1
    with pytest.raises(BuildFailed, match="fail_all is set"):
        await DummyBuildService(fail_all=True).build(request())


async def test_a_slow_dummy_build_is_cancellable() -> None:
    dummy = DummyBuildService(delay=60)
    with anyio.move_on_after(0.1) as scope:
        await dummy.build(request())
    assert scope.cancelled_caught
