"""Benchmark: path-info lookups per second over a unix socket, tvixd vs ``nix-daemon``.

Adds ``--paths`` small files (default 1000; ``--quick``: 200) to both stores
under the same store paths: to Nix with one ``nix-store --add`` call, to a
fresh tvixd (embedded default backends: path infos in SQLite) through its
gRPC castore and path-info services (``import_path_as_store_path``; the store
paths are checked to be Nix's).  Then, for each concurrency ``C`` (default
1, 8 and 32; ``--quick``: 1 and 8), ``C`` clients each look up every path
once, all at the same time:

* tvixd: ``C`` connections, each a ``GrpcPathInfoService.get`` loop (the
  client validates every answer), spread over two client processes so that
  one client's Python does not cap the rate;
* Nix: ``C`` processes of ``nix-store --query --hash PATH...`` against a
  ``nix-daemon`` started for the benchmark on its own socket
  (``NIX_DAEMON_SOCKET_PATH``, ``NIX_REMOTE=daemon``): one ``queryPathInfo``
  per path over the daemon protocol.

Prints lookups per second for both and tvixd's server CPU per lookup;
``--json PATH`` writes the results.  The paths added to Nix are deleted at the
end (best effort).  Run: ``.venv/bin/python bench/lookup.py --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, ROOT, BenchError, TvixDaemon, run
from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.store.grpc import GrpcPathInfoService
from clients.store.ingest import import_path_as_store_path
from nixcompat.storepath import StorePath

__all__ = ["NixDaemon", "import_into_tvixd", "main", "measure", "tvixd_clients"]

CLIENT_PROCESSES = 2


def make_files(directory: Path, count: int) -> list[Path]:
    """``count`` small files with distinct contents (a fresh nonce: new store paths each run)."""
    nonce = os.urandom(8).hex()
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = directory / f"lookup-{i:05d}"
        path.write_text(f"{nonce} {i}\n")
        files.append(path)
    return files


async def import_into_tvixd(socket: Path, files: Sequence[Path]) -> list[str]:
    """Import ``files`` into the tvixd at ``socket`` as ``nix-store --add`` would; the store paths."""
    url = f"grpc+unix://{socket}"
    blobs = GrpcBlobService.from_url(url)
    directories = GrpcDirectoryService.from_url(url)
    infos = GrpcPathInfoService.from_url(url)
    try:
        paths = []
        for path in files:
            info, _ = await import_path_as_store_path(path, None, blobs, directories, infos)
            paths.append(info.store_path.absolute)
        return paths
    finally:
        for service in (infos, directories, blobs):
            await service.close()


async def tvixd_clients(socket: Path, paths: Sequence[str], tasks: int) -> dict[str, float]:
    """``tasks`` connections, each getting every path once; ``{"start", "end", "gets"}``."""
    digests = [StorePath.from_absolute_path(p).digest for p in paths]
    clients = [GrpcPathInfoService.from_url(f"grpc+unix://{socket}") for _ in range(tasks)]
    missing = 0

    async def client(service: GrpcPathInfoService) -> None:
        nonlocal missing
        for digest in digests:
            if await service.get(digest) is None:
                missing += 1

    try:
        for service in clients:  # connect before the clock starts
            await service.get(digests[0])
        start = time.time()
        async with anyio.create_task_group() as tg:
            for service in clients:
                tg.start_soon(client, service)
        end = time.time()
    finally:
        for service in clients:
            await service.close()
    if missing:
        raise BenchError(f"{missing} lookups found nothing")
    return {"start": start, "end": end, "gets": float(tasks * len(digests))}


def _tvixd_rate(daemon: TvixDaemon, paths_file: Path, count: int, concurrency: int) -> float:
    per_process = [concurrency // CLIENT_PROCESSES] * CLIENT_PROCESSES
    for i in range(concurrency % CLIENT_PROCESSES):
        per_process[i] += 1
    argv = [PYTHON, str(Path(__file__).resolve()), "--client", str(daemon.socket), str(paths_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([*argv, str(n)], stdout=subprocess.PIPE, env=env) for n in per_process if n
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise BenchError(f"a lookup client exited with {proc.returncode}")
        results.append(json.loads(out))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return float(sum(r["gets"] for r in results) / wall)


class NixDaemon:
    """A ``nix-daemon`` on its own socket (the system's socket is left alone)."""

    def __init__(self, work: Path) -> None:
        self.socket = work / "nix-daemon.sock"
        self.env = {**os.environ, "NIX_DAEMON_SOCKET_PATH": str(self.socket)}
        self._log = open(work / "nix-daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["nix-daemon"], env=self.env, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError("nix-daemon did not create its socket within 30 s")
            time.sleep(0.05)
        self.client_env = {**self.env, "NIX_REMOTE": "daemon"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _nix_rate(nix: NixDaemon, paths: Sequence[str], concurrency: int) -> float:
    argv = ["nix-store", "--query", "--hash", *paths]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            argv, env=nix.client_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(concurrency)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise BenchError(f"nix-store --query exited with {proc.returncode}: {err[-500:]!r}")
    return concurrency * len(paths) / (time.perf_counter() - start)


def measure(work: Path, count: int, concurrencies: Sequence[int]) -> dict[str, Any]:
    """Both stores, every concurrency (see the module docstring), as a JSON-ready dict."""
    files = make_files(work / "files", count)
    nix_paths = run(["nix-store", "--add", *map(str, files)]).split()
    rows = []
    try:
        with TvixDaemon(work / "tvixd", "dummy://") as daemon:
            ours = anyio.run(import_into_tvixd, daemon.socket, files)
            if ours != nix_paths:
                raise BenchError(f"store paths differ: tvixd {ours[:2]}… vs nix {nix_paths[:2]}…")
            paths_file = work / "paths.json"
            paths_file.write_text(json.dumps(ours))
            nix = NixDaemon(work)
            try:
                for concurrency in concurrencies:
                    cpu = daemon.cpu()
                    tvixd_rate = _tvixd_rate(daemon, paths_file, count, concurrency)
                    cpu = daemon.cpu() - cpu
                    nix_rate = _nix_rate(nix, nix_paths, concurrency)
                    rows.append(
                        {
                            "clients": concurrency,
                            "tvixd_per_s": tvixd_rate,
                            "nix_per_s": nix_rate,
                            "tvixd_over_nix": tvixd_rate / nix_rate,
                            "tvixd_server_cpu_us_per_get": cpu / (concurrency * count) * 1e6,
                        }
                    )
            finally:
                nix.stop()
    finally:
        subprocess.run(["nix-store", "--delete", *nix_paths], capture_output=True, check=False)
    return {"paths": count, "rates": rows}


def table(result: dict[str, Any]) -> Iterator[str]:
    yield f"path-info lookups of {result['paths']} paths, every client looks up each once:"
    yield f"  {'clients':>7}{'tvixd/s':>10}{'nix/s':>10}{'ratio':>8}{'tvixd CPU/get':>15}"
    for r in result["rates"]:
        yield (
            f"  {r['clients']:>7}{r['tvixd_per_s']:>10.0f}{r['nix_per_s']:>10.0f}"
            f"{r['tvixd_over_nix']:>8.2f}{r['tvixd_server_cpu_us_per_get']:>12.0f} us"
        )


def _client(argv: list[str]) -> int:
    socket, paths_file, tasks = Path(argv[0]), Path(argv[1]), int(argv[2])
    paths = json.loads(paths_file.read_text())
    print(json.dumps(anyio.run(tvixd_clients, socket, paths, tasks)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        return _client(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 paths, 1 and 8 clients")
    parser.add_argument("--paths", type=int, help="how many store paths (default 1000)")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrencies (default 1 8 32)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    count = args.paths or (200 if args.quick else 1000)
    concurrencies = args.clients or ([1, 8] if args.quick else [1, 8, 32])
    with tempfile.TemporaryDirectory(prefix="lookup-bench-") as tmp:
        result = measure(Path(tmp), count, concurrencies)
    for line in table(result):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
