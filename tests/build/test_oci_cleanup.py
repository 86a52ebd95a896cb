"""A container whose deletion is not confirmed never hands its store directory to another build.

A killed build that runc could not delete may still run, with write access
to its store directory (root:gid, 1775): that directory is removed whole
instead of being swept and reused (tests/build/test_storedirs.py covers the
sweep itself).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from tvixd.build.oci.runner import Runc, _Answers
from tvixd.build.oci.service import _clean_up
from tvixd.build.oci.storedirs import StoreDir

pytestmark = pytest.mark.asyncio


async def _unstopped(runc_binary: str, tmp_path: Path, *answers: bytes, kill: bool) -> set[str]:
    """What stays unstopped after the shim sent ``answers`` (JSON lines) and closed its side;
    ``kill``: the runner stops the container (else it only waits for the deletion)."""
    runc = Runc(tmp_path / "state", runc=runc_binary)
    ours, shim = socket.socketpair()
    ours.setblocking(False)
    shim.sendall(b"".join(a + b"\n" for a in answers))
    shim.close()
    try:
        if kill:
            await runc._stop(_Answers(ours), "tvixd-test")
        else:
            await runc._deleted(_Answers(ours), "tvixd-test")
    finally:
        ours.close()
    return runc.unstopped


async def _stop_with(runc_binary: str, tmp_path: Path) -> set[str]:
    return await _unstopped(runc_binary, tmp_path, kill=True)  # the shim is gone: no answer


async def test_a_failed_delete_marks_the_container_unstopped(tmp_path: Path) -> None:
    assert await _stop_with("/bin/false", tmp_path) == {"tvixd-test"}


async def test_a_confirmed_delete_does_not(tmp_path: Path) -> None:
    assert await _stop_with("/bin/true", tmp_path) == set()


def _store_with_leftover(root: Path) -> StoreDir:
    path = root / "store-0"
    path.mkdir()
    (path / "planted-by-the-build").write_text("x")
    return StoreDir(os.fsencode(path))


async def test_an_unstopped_containers_store_is_removed_not_swept(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"

    def clean(reuse: bool) -> tuple[bool, bool, bool, list[str]]:
        bundle.mkdir()
        store = _store_with_leftover(tmp_path)
        reused = _clean_up(bundle, store, reuse)
        path = Path(os.fsdecode(store.path))
        exists = path.exists()
        left = sorted(os.listdir(path)) if exists else []
        if exists:
            os.rmdir(path)
        return reused, bundle.exists(), exists, left

    # reusable: swept (the planted name is gone), kept for the next build
    assert await anyio.to_thread.run_sync(clean, True) == (True, False, True, [])
    # not known to be gone: not reused, the directory removed whole
    assert await anyio.to_thread.run_sync(clean, False) == (False, False, False, [])


async def _answered(runc_binary: str, tmp_path: Path, *answers: bytes) -> set[str]:
    return await _unstopped(runc_binary, tmp_path, *answers, kill=False)


async def test_a_deletion_the_shim_confirmed_is_not_repeated(tmp_path: Path) -> None:
    # /bin/false as runc: a delete of our own would fail and mark the container
    assert (
        await _answered("/bin/false", tmp_path, b'{"exit_code": 0}', b'{"deleted": true}') == set()
    )


async def test_a_deletion_the_shim_could_not_do_is_done_here(tmp_path: Path) -> None:
    failed = (b'{"exit_code": 0}', b'{"deleted": false}')
    assert await _answered("/bin/true", tmp_path, *failed) == set()
    assert await _answered("/bin/false", tmp_path, *failed) == {"tvixd-test"}
    # the shim died before it said anything about the deletion
    assert await _answered("/bin/false", tmp_path, b'{"exit_code": 0}') == {"tvixd-test"}
