"""A build slot is a running container: free once the builder exits, as Nix's ``max-jobs``.

The shim answers a build's exit status as soon as the container's init is
reaped and deletes the container after; the build's outputs are collected
meanwhile, outside the slot.  A runc wrapper that gives every container a
poststop hook (so the shim must leave its deletion to ``runc delete``, which
runs the hook) and holds every ``runc delete`` until the test lets it go
shows both: with one slot, a second build runs while the first one's
container still exists.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import anyio
import pytest

from nixcompat.storepath import StorePath
from tests.build.helpers import Store, sh_derivation
from tests.build.test_oci_failures import assert_clean
from tests.conftest import require_tool
from tvixd.build.oci.service import OciBuildService, OciConfig

pytestmark = [pytest.mark.asyncio, pytest.mark.runc]


_ADD_HOOK = """
import json, sys
path = sys.argv[1] + "/config.json"
with open(path) as f:
    config = json.load(f)
hook = {"path": "/bin/sh", "args": ["sh", "-c", "echo stopped >> " + sys.argv[2]]}
config.setdefault("hooks", {})["poststop"] = [hook]
with open(path, "w") as f:
    json.dump(config, f)
"""


def _held_runc(directory: Path) -> tuple[Path, Path, Path, Path]:
    """A runc wrapper adding a poststop hook to every container and whose ``delete`` waits for
    a file; (wrapper, that file, the deletions log, the hook's log)."""
    gate, deletions = directory / "deletions-may-go", directory / "deletions"
    hooked, script = directory / "poststop-hooks", directory / "add_hook.py"
    script.write_text(_ADD_HOOK)
    wrapper = directory / "runc-held"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" run "*)\n'
        '  prev=; for arg in "$@"; do [ "$prev" = --bundle ] && bundle=$arg; prev=$arg; done\n'
        f'  {sys.executable} {script} "$bundle" {hooked} || exit 99 ;;\n'
        '*" delete "*)\n'
        f'  echo "$*" >> {deletions}\n'
        f"  while [ ! -e {gate} ]; do sleep 0.01; done ;;\n"
        "esac\n"
        f'exec {require_tool("runc")} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, gate, deletions, hooked


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


async def test_the_slot_is_free_once_the_builder_exits(
    tmp_path: Path, store: Store, busybox: StorePath
) -> None:
    assert shutil.which("sh")
    wrapper, gate, deletions, hooked = _held_runc(tmp_path)
    config = OciConfig(max_builds=1, runc=str(wrapper))
    state = tmp_path / "state"
    builder = await OciBuildService.open(state, store.blobs, store.directories, config)
    try:
        first_done, second_ran = anyio.Event(), anyio.Event()

        async def first() -> None:
            build = await store.build(builder, sh_derivation("first", "mkdir $out", busybox))
            assert build.outputs
            first_done.set()

        async def on_log(line: bytes) -> None:
            if line == b"second running":
                second_ran.set()

        async def second() -> None:
            drv = sh_derivation("second", "echo second running; mkdir $out", busybox)
            await store.build(builder, drv, on_log=on_log)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(
                _wait_for, deletions
            )  # the first builder has exited; its deletion is held
            tg.start_soon(second)
            with anyio.fail_after(30):  # with the slot held until the deletion: never
                await second_ran.wait()
            assert len(await builder._runc.list_ids()) == 2  # the first container still exists
            assert not first_done.is_set()  # a build ends only once its container is gone
            gate.touch()
        assert first_done.is_set()
        await assert_clean(builder, state)
        # runc deleted both containers, running their hooks
        assert hooked.read_text().splitlines() == ["stopped", "stopped"]
    finally:
        gate.touch()
        await builder.close()
