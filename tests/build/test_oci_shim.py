"""The builder's long-lived runc shim: shared by builds, replaced when it dies, stopped on close."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from clients.build.errors import BuildError
from nixcompat.storepath import StorePath
from tests.build.helpers import Store, sh_derivation
from tests.build.test_oci_failures import assert_clean
from tvixd.build.oci.service import OciBuildService

pytestmark = [pytest.mark.asyncio, pytest.mark.runc]


def _shim_pid(builder: OciBuildService) -> int:
    shim = builder._runc._shim
    assert shim is not None
    return shim.process.pid


async def test_a_dead_shim_fails_its_builds_cleanly_and_is_replaced(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    await store.build(builder, sh_derivation("first", "mkdir $out", busybox))
    first = _shim_pid(builder)
    await store.build(builder, sh_derivation("second", "mkdir $out", busybox))
    assert _shim_pid(builder) == first  # one shim for every build

    running = anyio.Event()

    async def on_log(line: bytes) -> None:
        if line == b"running":
            running.set()

    drv = sh_derivation("orphaned", "echo running; sleep 100; mkdir $out", busybox)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def kill_shim() -> None:
                await running.wait()
                os.kill(first, signal.SIGKILL)

            tg.start_soon(kill_shim)
            with pytest.raises(BuildError, match="the runc shim exited during the build") as info:
                await store.build(builder, drv, on_log=on_log)
    assert str(info.value).endswith("\n  running")  # the log tail
    await assert_clean(builder, tmp_path / "state")

    build = await store.build(builder, sh_derivation("after", "echo $out; mkdir $out", busybox))
    assert build.outputs
    assert _shim_pid(builder) != first


async def test_closing_the_builder_stops_the_shim(
    tmp_path: Path, store: Store, busybox: StorePath
) -> None:
    builder = await OciBuildService.open(tmp_path / "state", store.blobs, store.directories)
    await store.build(builder, sh_derivation("one", "mkdir $out", busybox))
    shim = builder._runc._shim
    assert shim is not None
    await builder.close()
    assert shim.process.returncode == 0
