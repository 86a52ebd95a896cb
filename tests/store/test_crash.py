"""Crash safety: writers killed with SIGKILL mid-upload leave a consistent store.

Afterwards no blob file holds contents that do not hash to its name, no path
info exists whose closure is incomplete, ``tvixctl store verify`` passes, and
importing again completes the job.  Two crashes: the writing process itself
(local backends used directly), and the store server under a running
``tvixctl store import``.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.store.bridge_fixtures import (
    WRITER_READY_AT_START,
    MiB,
    blob_files,
    blob_writer_pids,
    corrupt_blobs,
    python_env,
    start_server,
    store_urls,
    tvixctl,
)

WRITER = (
    WRITER_READY_AT_START
    + """
import os
import sys
from pathlib import Path

import anyio

from clients.store.ingest import import_path_as_store_path
from tvixd.castore.registry import blob_service_from_url, directory_service_from_url
from tvixd.store.registry import path_info_service_from_url


async def main(state: str, trees: list[str]) -> None:
    blobs = await blob_service_from_url(f"objectstore+file://{state}/blobs")
    directories = await directory_service_from_url(f"sqlite://{state}/store.db")
    infos = await path_info_service_from_url(
        f"sqlite://{state}/store.db", blobs=blobs, directories=directories
    )
    for tree in trees:
        info, _ = await import_path_as_store_path(tree, None, blobs, directories, infos)
        print(info.store_path, flush=True)


if "TEST_WRITER_START_AFTER" in os.environ:  # a writer process (taking blobs once started)
    writer.START_AFTER = int(os.environ["TEST_WRITER_START_AFTER"])
anyio.run(main, sys.argv[1], sys.argv[2:])
"""
)

TREES = 4
LARGE_PER_TREE = 12
SMALL_PER_TREE = 150


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Trees of distinct random files: ~13 MiB and 162 blobs each."""
    base = tmp_path_factory.mktemp("crash")
    rng = random.Random(3)
    out = []
    for t in range(TREES):
        tree = base / f"tree-{t}"
        (tree / "small").mkdir(parents=True)
        for i in range(LARGE_PER_TREE):
            (tree / f"large-{i:02}").write_bytes(rng.randbytes(MiB + rng.randrange(MiB // 4)))
        for i in range(SMALL_PER_TREE):
            (tree / "small" / f"s-{i:03}").write_bytes(rng.randbytes(rng.randrange(1, 9000)))
        out.append(tree)
    return out


def kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` (polled: the event is in another process)."""
    deadline = time.monotonic() + 30
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"{what} exited ({process.returncode}) before it could be killed")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} made no progress within 30 s")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL


def verify(state: Path, socket: Path) -> tuple[int, str]:
    with start_server(socket, state):
        done = tvixctl("store", "verify", "--verbose", socket=socket)
    return done.returncode, (done.stdout + done.stderr).decode()


@pytest.mark.parametrize(
    "start_after",
    [pytest.param(None, id="in-process"), pytest.param(16, id="writer-process")],
)
def test_writer_killed_mid_upload(
    trees: list[Path], tmp_path: Path, start_after: int | None
) -> None:
    """With ``writer-process``, each tree's small blobs past the 16th go through a blob
    writer process, which outlives the killed writer only until it sees its socket close."""
    state = tmp_path / "state"
    argv = [sys.executable, "-c", WRITER, str(state), *map(str, trees)]
    env = python_env()
    if start_after is not None:
        env["TEST_WRITER_START_AFTER"] = str(start_after)
    writer = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert writer.stdout is not None
    # past the first tree's path info, into the second tree's upload, well before the last
    # tree is done (each takes ~0.1 s). Counting named blobs instead raced: the ingest names
    # a tree's blobs in groups, so the count jumps, and the writer could finish first.
    first = writer.stdout.readline()
    assert first, "the writer exited without storing a tree"
    time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait(timeout=10) == -signal.SIGKILL
    finished = (first + writer.stdout.read()).decode().split()
    writer.stdout.close()
    assert 1 <= len(finished) < TREES
    deadline = time.monotonic() + 30
    while blob_writer_pids(state / "blobs"):
        assert time.monotonic() < deadline, "a blob writer process outlived its ingest"
        time.sleep(0.02)
    assert corrupt_blobs(state / "blobs") == []
    code, report = verify(state, tmp_path / "s.sock")
    assert code == 0, report
    stored = [line.split()[1] for line in report.splitlines() if line.startswith("ok   ")]
    assert f"checked {len(stored)} paths: 0 with problems" in report
    # every path reported is stored; the kill may also fall between a path info's commit and
    # the line that reports it: then the next tree's is stored too, complete (checked below)
    assert set(finished) <= set(stored)
    assert len(stored) - len(finished) in (0, 1)
    # starting again completes the job
    again = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().split()[: len(finished)] == finished
    assert set(stored) == set(again.stdout.decode().split()[: len(stored)])
    code, report = verify(state, tmp_path / "s.sock")
    assert code == 0, report
    assert f"checked {TREES} paths: 0 with problems" in report


def test_server_killed_under_tvixctl_import(trees: list[Path], tmp_path: Path) -> None:
    state, socket = tmp_path / "state", tmp_path / "tvixd.sock"
    with start_server(socket, state) as server:
        first = tvixctl("store", "import", str(trees[0]), socket=socket)
        assert first.returncode == 0, first.stderr
        before = len(blob_files(state / "blobs"))
        argv = [sys.executable, "-m", "clients.tvixctl", "store", "import", str(trees[1])]
        client = subprocess.Popen(
            [*argv, "--socket", str(socket)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=python_env(),
        )
        per_tree = LARGE_PER_TREE + SMALL_PER_TREE
        kill_when(
            server, lambda: len(blob_files(state / "blobs")) >= before + per_tree // 2, "server"
        )
        out, err = client.communicate(timeout=30)
        assert client.returncode == 1
        assert out == b""  # no store path was printed
        assert b"tvixctl: error:" in err
    assert corrupt_blobs(state / "blobs") == []
    code, report = verify(state, socket)  # the stale socket file is replaced
    assert code == 0, report
    assert "checked 1 paths: 0 with problems" in report
    assert first.stdout.decode().strip() in report
    with start_server(socket, state):
        redo = tvixctl("store", "import", str(trees[1]), socket=socket)
        assert redo.returncode == 0, redo.stderr
        assert tvixctl("store", "verify", socket=socket).returncode == 0


def test_store_url_helper_is_consistent(tmp_path: Path) -> None:
    """The writer and the server must use the same backends for the checks above to mean anything."""
    urls = store_urls(tmp_path)
    assert f"objectstore+file://{tmp_path}/blobs" in urls
    assert urls.count(f"sqlite://{tmp_path}/store.db") == 2
    assert f"objectstore+file://{tmp_path}/blobs" in WRITER.replace("{state}", str(tmp_path))
