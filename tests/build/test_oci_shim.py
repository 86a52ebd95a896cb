"""The builder's long-lived runc shim: shared by builds, replaced when it dies, stopped on close."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest

from clients.build.errors import BuildError
from nixcompat.storepath import StorePath
from tests.build.helpers import Store, sh_derivation
from tests.build.test_oci_failures import assert_clean
from tests.conftest import require_tool
from tvixd.build.oci.service import OciBuildService, OciConfig

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


def _recording_runc(directory: Path) -> tuple[Path, Path, Path]:
    """A runc wrapper logging its calls and keeping each started container's ``state.json``;
    (wrapper, the log, the directory of states)."""
    calls, states = directory / "runc-calls", directory / "states"
    states.mkdir()
    wrapper = directory / "runc-recording"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f'{require_tool("runc")} "$@"; code=$?\n'
        "root=$2; for id; do :; done\n"  # called as runc --root ROOT ... ID
        'case " $* " in *" run "*)\n'
        f'  cp "$root/$id/state.json" "{states}/$id.json" ;;\n'
        "esac\n"
        "exit $code\n"
    )
    wrapper.chmod(0o755)
    return wrapper, calls, states


def _left_behind(states: Path, root: Path) -> list[str]:
    """What is left of the recorded containers: cgroups and runc state directories."""
    recorded = sorted(states.iterdir())
    assert len(recorded) == 2
    left = []
    for path in recorded:
        container = json.loads(path.read_text())
        cgroups = set(container["cgroup_paths"].values())
        assert cgroups  # runc made some
        left += [cgroup for cgroup in cgroups if os.path.exists(cgroup)]
        left += [str(root / container["id"])] if (root / container["id"]).exists() else []
    return left


async def test_the_shim_deletes_a_finished_container_itself(
    tmp_path: Path, store: Store, busybox: StorePath
) -> None:
    wrapper, calls, states = _recording_runc(tmp_path)
    state = tmp_path / "state"
    config = OciConfig(runc=str(wrapper))
    builder = await OciBuildService.open(state, store.blobs, store.directories, config)
    try:
        for name in ("one", "two"):
            await store.build(builder, sh_derivation(name, "mkdir $out", busybox))
        await assert_clean(builder, state)
    finally:
        await builder.close()
    root = Path(calls.read_text().split()[1])  # runc --root ROOT ...
    assert _left_behind(states, root) == []
    # runc was started once per build, and never to delete
    called = calls.read_text()
    assert called.count(" run --detach ") == 2
    assert " delete " not in called
