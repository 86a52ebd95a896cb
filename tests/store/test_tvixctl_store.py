"""``tvixctl store …`` end to end: a real server subprocess, tvixctl subprocesses, Nix as reference.

The server is ``python -m tvixd.store.serve`` on a unix socket with the
persistent backends (objectstore blobs, SQLite directories and path infos).
"""

from __future__ import annotations

import json
import signal
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import pytest

from clients.castore.grpc import GrpcBlobService
from clients.castore.model import B3Digest
from clients.errors import StorageError
from clients.tvixctl import main
from tests.store.bridge_fixtures import (
    blob_files,
    nix_add,
    nix_dump,
    rich_tree,
    start_server,
    tvixctl,
)
from tvixd.store.serve import ServeConfig, serve


@dataclass(frozen=True)
class Served:
    socket: Path
    state: Path
    tree: Path
    nar: bytes
    nix_path: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("tvixctl")
    tree = rich_tree(base / "ctl-tree")
    (nix_path,) = nix_add([tree])
    socket = base / "tvixd.sock"
    with start_server(socket, base / "state") as server:
        yield Served(socket, base / "state", tree, nix_dump(tree), nix_path)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
    assert not socket.exists()  # removed on shutdown


@pytest.fixture(scope="module")
def imported(served: Served) -> str:
    done = tvixctl("store", "import", str(served.tree), socket=served.socket)
    assert done.returncode == 0, done.stderr
    store_path = done.stdout.decode().strip()
    assert store_path == served.nix_path  # exactly what nix-store --add gives
    summary = done.stderr.decode()
    assert "files" in summary
    assert "NAR hash sha256:" in summary
    return store_path


def test_ls(served: Served, imported: str) -> None:
    done = tvixctl("store", "ls", imported, socket=served.socket)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    assert names == sorted(names, key=lambda n: n.rstrip("/").encode())
    by_name = {n.rstrip("/"): line for n, line in zip(names, lines, strict=True)}
    assert by_name["hello.txt"].split()[:2] == ["-r--r--r--", "14"]
    assert by_name["link-rel"].endswith("link-rel -> hello.txt")
    assert by_name["bin"].startswith("dr-xr-xr-x")
    sub = tvixctl("store", "ls", f"{imported}/bin", socket=served.socket).stdout.decode()
    assert "-r-xr-xr-x" in next(line for line in sub.splitlines() if "run.sh" in line)
    assert "-r--r--r--" in next(line for line in sub.splitlines() if "group-x-only" in line)


def test_cat(served: Served, imported: str) -> None:
    done = tvixctl("store", "cat", f"{imported}/big.bin", socket=served.socket)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (served.tree / "big.bin").read_bytes()
    unicode = tvixctl("store", "cat", f"{imported}/日本語/ファイル", socket=served.socket)
    assert unicode.stdout == "こんにちは\n".encode()
    directory = tvixctl("store", "cat", f"{imported}/bin", socket=served.socket)
    assert directory.returncode == 1
    assert b"is a directory, not a regular file" in directory.stderr
    missing = tvixctl("store", "cat", f"{imported}/nope", socket=served.socket)
    assert missing.returncode == 1
    assert b"no such file or directory" in missing.stderr


def test_path_info_json(served: Served, imported: str) -> None:
    done = tvixctl("store", "path-info", "--json", imported, socket=served.socket)
    assert done.returncode == 0, done.stderr
    (info,) = json.loads(done.stdout)
    assert info["path"] == imported
    assert info["narSize"] == len(served.nar)
    assert info["narHash"].startswith("sha256-")
    assert info["references"] == []
    assert info["ca"].startswith("fixed:r:sha256:")
    text = tvixctl("store", "path-info", imported, socket=served.socket).stdout.decode()
    assert f"NarSize: {len(served.nar)}" in text


def test_nar_equals_nix_dump(served: Served, imported: str) -> None:
    done = tvixctl("store", "nar", imported, socket=served.socket)
    assert done.returncode == 0, done.stderr
    assert done.stdout == served.nar


def test_export(served: Served, imported: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    done = tvixctl("store", "export", imported, str(dest), socket=served.socket)
    assert done.returncode == 0, done.stderr
    assert nix_dump(dest) == served.nar
    assert (dest / "bin" / "run.sh").stat().st_mode & stat.S_IXUSR
    again = tvixctl("store", "export", imported, str(dest), socket=served.socket)
    assert again.returncode == 1
    assert b"refusing to overwrite" in again.stderr


def test_unknown_path(served: Served) -> None:
    absent = "/nix/store/" + "0" * 32 + "-absent"
    done = tvixctl("store", "path-info", absent, socket=served.socket)
    assert done.returncode == 1
    assert f"{absent} is not in the store".encode() in done.stderr


def test_verify_then_detect_a_deleted_blob(served: Served, imported: str, tmp_path: Path) -> None:
    ok = tvixctl("store", "verify", "--verbose", socket=served.socket)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"ok   {imported}".encode() in ok.stdout
    # a second path, to check only the damaged one is named
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_bytes(b"another path\n")
    second = tvixctl("store", "import", str(other), socket=served.socket)
    assert second.returncode == 0, second.stderr
    victim = next(p for p in blob_files(served.state / "blobs") if p.stat().st_size == 3 << 20)
    victim.chmod(0o644)
    victim.unlink()
    bad = tvixctl("store", "verify", socket=served.socket)
    assert bad.returncode == 1
    report = bad.stdout.decode()
    assert f"FAIL {imported}: contents:" in report
    assert victim.name in report
    assert second.stdout.decode().strip() not in report
    restored = tvixctl("store", "import", str(served.tree), socket=served.socket)
    assert restored.returncode == 0, restored.stderr
    assert tvixctl("store", "verify", socket=served.socket).returncode == 0


def test_no_server_names_the_socket(tmp_path: Path) -> None:
    socket = tmp_path / "nobody-home.sock"
    done = tvixctl("store", "ls", "/nix/store/" + "0" * 32 + "-x", socket=socket)
    assert done.returncode == 1
    message = done.stderr.decode()
    assert str(socket) in message
    assert "python -m tvixd.store.serve --listen unix:" in message
    env_socket = tvixctl("store", "verify", env={"TVIXD_SOCKET": str(socket)})
    assert str(socket).encode() in env_socket.stderr


@pytest.mark.parametrize(
    "command", ["", "import", "export", "ls", "cat", "path-info", "nar", "verify"]
)
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["store", *filter(None, [command]), "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "tvixctl store " in text
    assert "example" in text
    if command:
        assert "--socket" in text


@pytest.mark.asyncio
async def test_serve_drains_in_flight_requests_on_stop(tmp_path: Path) -> None:
    """Stop: no new clients, new requests refused, the running put completes, then exit."""
    socket = tmp_path / "drain.sock"
    stop, ready, started, gate, done = (anyio.Event() for _ in range(5))
    digests: list[B3Digest] = []

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield b"first half "
        started.set()
        await gate.wait()
        yield b"second half"

    async with anyio.create_task_group() as tg:
        config = ServeConfig(f"unix:{socket}", grace=10)
        tg.start_soon(partial(serve, config, stop=stop, ready=lambda _: ready.set()))
        with anyio.fail_after(10):
            await ready.wait()
        blobs = GrpcBlobService.from_url(f"grpc+unix://{socket}")

        async def put() -> None:
            digests.append(await blobs.put(slow_chunks()))
            done.set()

        tg.start_soon(put)
        with anyio.fail_after(10):
            await started.wait()
            assert not await blobs.has(B3Digest.of(b"x"))  # the put stream is dispatched by now
            stop.set()
            # the socket file goes at once (no new clients); it is another task's doing
            while await anyio.Path(socket).exists():  # noqa: ASYNC110
                await anyio.sleep(0.01)
            with pytest.raises(StorageError, match="shutting down"):
                await blobs.has(B3Digest.of(b"x"))
            gate.set()
            await done.wait()
        await blobs.close()
    assert digests == [B3Digest.of(b"first half second half")]
