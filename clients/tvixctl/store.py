"""``tvixctl store …``: import, inspect, export and verify store paths over gRPC.

Every command connects to a store server's unix socket (``--socket``, default
``$TVIXD_SOCKET`` or ``/run/tvixd/tvixd.sock``) and uses the three store
services over ``tvix.castore.v1`` / ``tvix.store.v1`` — ``clients`` never
touches the store's files.  When nothing listens on the socket, the message
names it and says how to start a server.

A ``STORE_PATH[/sub]`` argument is ``/nix/store/<hash>-<name>``, optionally
followed by a path inside it; symlinks inside are not followed.  The command
line is defined in :mod:`clients.tvixctl.store_cli`, which imports this
module only when a ``store`` command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.to_thread

from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.castore.model import B3Digest, DirectoryNode, FileNode, Node, SymlinkNode
from clients.errors import StoreError
from clients.store.grpc import GrpcPathInfoService
from clients.store.ingest import export_node, import_path_as_store_path
from clients.store.model import PathInfo
from clients.store.nar import CastoreNarCalculator, render_nar
from clients.tvixctl.common import CommandError
from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.storepath import StorePath, split_absolute_path

DEFAULT_SOCKET = "/run/tvixd/tvixd.sock"


@dataclass(frozen=True)
class Store:
    """The three services over one socket."""

    socket: str
    blobs: GrpcBlobService
    directories: GrpcDirectoryService
    path_infos: GrpcPathInfoService


async def _check_listening(socket: str) -> None:
    try:
        stream = await anyio.connect_unix(socket)
    except OSError as exc:
        raise CommandError(
            f"cannot connect to the store server at {socket}: {exc.strerror or exc}\n"
            f"Is tvixd running there? Start it with\n"
            f"  tvixd --listen unix:{socket}\n"
            f"or only a store server with\n"
            f"  python -m tvixd.store.serve --listen unix:{socket} "
            f"--blob-service objectstore+file:///var/lib/tvixd/blobs "
            f"--directory-service sqlite:///var/lib/tvixd/store.db "
            f"--path-info-service sqlite:///var/lib/tvixd/store.db\n"
            f"or point tvixctl at another socket with --socket PATH or $TVIXD_SOCKET."
        ) from None
    await stream.aclose()


@asynccontextmanager
async def connect(socket: str) -> AsyncIterator[Store]:
    """The store services at the unix socket ``socket`` (checked to be listening first)."""
    path = os.path.abspath(socket)  # noqa: ASYNC240  # pure string work (cwd lookup only)
    await _check_listening(path)
    url = f"grpc+unix://{path}"
    store = Store(
        path,
        GrpcBlobService.from_url(url),
        GrpcDirectoryService.from_url(url),
        GrpcPathInfoService.from_url(url),
    )
    try:
        yield store
    finally:
        for service in (store.blobs, store.directories, store.path_infos):
            await service.close()


def _text(name: bytes) -> str:
    return name.decode("utf-8", errors="backslashreplace")


async def _path_info(store: Store, path: StorePath) -> PathInfo:
    info = await store.path_infos.get(path.digest)
    if info is None:
        raise CommandError(f"{path} is not in the store at {store.socket}")
    return info


async def resolve(store: Store, spec: str) -> tuple[PathInfo, Node, str]:
    """The path info, the node ``spec`` (``STORE_PATH[/sub]``) names, and a display path."""
    try:
        path, rest = split_absolute_path(spec.rstrip("/") if spec != "/" else spec)
    except NixCompatError as exc:
        raise CommandError(str(exc)) from None
    info = await _path_info(store, path)
    node: Node = info.node
    shown = path.absolute
    for part in filter(None, rest.split("/")):
        if not isinstance(node, DirectoryNode):
            kind = "a symlink" if isinstance(node, SymlinkNode) else "a file"
            raise CommandError(f"{shown} is {kind}, not a directory")
        directory = await store.directories.get(node.digest)
        if directory is None:
            raise CommandError(f"directory {B3Digest(node.digest)} of {shown} is missing")
        name = os.fsencode(part)
        found = next((n for n in directory.nodes() if n.name == name), None)
        shown = f"{shown}/{part}"
        if found is None:
            raise CommandError(f"{shown}: no such file or directory")
        node = found
    return info, node, shown


def _ls_line(node: Node, name: str) -> str:
    if isinstance(node, DirectoryNode):
        return f"dr-xr-xr-x {node.size:>12} {name}/"
    if isinstance(node, FileNode):
        mode = "-r-xr-xr-x" if node.executable else "-r--r--r--"
        return f"{mode} {node.size:>12} {name}"
    return f"lrwxrwxrwx {'':>12} {name} -> {_text(node.target)}"


async def _write_out(out: BinaryIO, data: bytes) -> None:
    await anyio.to_thread.run_sync(out.write, data)


# ---- commands --------------------------------------------------------------


async def cmd_import(store: Store, args: argparse.Namespace) -> int:
    source = Path(args.path)
    if not await anyio.to_thread.run_sync(os.path.lexists, source):
        raise CommandError(f"{source}: no such file or directory")
    info, result = await import_path_as_store_path(
        source, args.name, store.blobs, store.directories, store.path_infos
    )
    print(info.store_path.absolute, flush=True)
    nar_hash = NixHash(HashAlgo.sha256, info.nar_sha256)
    print(
        f"imported {source}: {result.files} files ({result.file_bytes} bytes), "
        f"{result.directories} directories, {result.symlinks} symlinks; "
        f"sent {result.blobs_uploaded} new blobs ({result.bytes_uploaded} bytes)\n"
        f"NAR size {info.nar_size}, NAR hash {nar_hash.to_nix_string()}",
        file=sys.stderr,
    )
    return 0


async def cmd_export(store: Store, args: argparse.Namespace) -> int:
    _, node, shown = await resolve(store, args.store_path)
    try:
        await export_node(node, store.blobs, store.directories, args.dest)
    except FileExistsError as exc:
        raise CommandError(str(exc)) from None
    print(f"exported {shown} to {args.dest}", file=sys.stderr)
    return 0


async def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    _, node, shown = await resolve(store, args.store_path)
    if not isinstance(node, DirectoryNode):
        print(_ls_line(node, shown))
        return 0
    directory = await store.directories.get(node.digest)
    if directory is None:
        raise CommandError(f"directory {B3Digest(node.digest)} of {shown} is missing")
    for child in directory.nodes():
        print(_ls_line(child, _text(child.name)))
    return 0


async def cmd_cat(store: Store, args: argparse.Namespace) -> int:
    _, node, shown = await resolve(store, args.store_path)
    if not isinstance(node, FileNode):
        kind = "a directory" if isinstance(node, DirectoryNode) else "a symlink"
        raise CommandError(f"{shown} is {kind}, not a regular file")
    reader = await store.blobs.open_read(node.digest)
    if reader is None:
        raise CommandError(f"blob {B3Digest(node.digest)} of {shown} is missing")
    out = sys.stdout.buffer
    async with reader:
        async for chunk in reader:
            await _write_out(out, chunk)
    await anyio.to_thread.run_sync(out.flush)
    return 0


def path_info_json(info: PathInfo) -> dict[str, Any]:
    """``nix path-info --json``'s fields for ``info`` (plus ``node``: the castore root)."""
    out: dict[str, Any] = {
        "path": info.store_path.absolute,
        "narHash": NixHash(HashAlgo.sha256, info.nar_sha256).to_sri(),
        "narSize": info.nar_size,
        "references": sorted(r.absolute for r in info.references),
    }
    if info.deriver is not None:
        out["deriver"] = info.deriver.absolute
    if info.signatures:
        out["signatures"] = [str(s) for s in info.signatures]
    if info.ca is not None:
        out["ca"] = str(info.ca)
    node = info.node
    if isinstance(node, SymlinkNode):
        out["node"] = {"type": "symlink", "target": _text(node.target)}
    else:
        kind = "directory" if isinstance(node, DirectoryNode) else "file"
        out["node"] = {"type": kind, "digest": node.digest.hex(), "size": node.size}
        if isinstance(node, FileNode):
            out["node"]["executable"] = node.executable
    return out


async def cmd_path_info(store: Store, args: argparse.Namespace) -> int:
    try:
        path = StorePath.from_absolute_path(args.store_path.rstrip("/"))
    except NixCompatError as exc:
        raise CommandError(str(exc)) from None
    info = await _path_info(store, path)
    if args.json:
        print(json.dumps([path_info_json(info)], indent=2))
        return 0
    data = path_info_json(info)
    nar_hash = NixHash(HashAlgo.sha256, info.nar_sha256)
    lines = [
        f"StorePath: {data['path']}",
        f"NarHash: {nar_hash.to_nix_string()}",
        f"NarSize: {info.nar_size}",
        "References: " + " ".join(data["references"]),
        f"Deriver: {data.get('deriver', '')}",
        "Sigs: " + " ".join(data.get("signatures", [])),
        f"CA: {data.get('ca', '')}",
        f"Node: {_ls_line(info.node, '(root)')}",
    ]
    print("\n".join(lines))
    return 0


async def cmd_nar(store: Store, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if out.isatty():
        raise CommandError("refusing to write a NAR to a terminal; redirect stdout to a file")
    _, node, _ = await resolve(store, args.store_path)
    async for chunk in render_nar(node, store.blobs, store.directories):
        await _write_out(out, chunk)
    await anyio.to_thread.run_sync(out.flush)
    return 0


async def verify_path(store: Store, info: PathInfo, known: dict[bytes, bool]) -> list[str]:
    """Problems with one path: missing references, missing or corrupt contents, NAR mismatch."""
    problems = []
    for ref in info.references:
        if ref.digest not in known:
            known[ref.digest] = await store.path_infos.get(ref.digest) is not None
        if not known[ref.digest]:
            problems.append(f"reference {ref} is not in the store")
    try:
        size, sha256 = await CastoreNarCalculator(store.blobs, store.directories).calculate_nar(
            info.node
        )
    except (StoreError, NixCompatError) as exc:
        problems.append(f"contents: {exc}")
        return problems
    if size != info.nar_size:
        problems.append(f"NAR size is {size}, the path info says {info.nar_size}")
    if sha256 != info.nar_sha256:
        got, want = (NixHash(HashAlgo.sha256, h).to_nix_string() for h in (sha256, info.nar_sha256))
        problems.append(f"NAR hash is {got}, the path info says {want}")
    return problems


async def cmd_verify(store: Store, args: argparse.Namespace) -> int:
    checked = failed = 0
    known: dict[bytes, bool] = {}
    async for info in store.path_infos.list():
        known[info.digest] = True
        checked += 1
        problems = await verify_path(store, info, known)
        if problems:
            failed += 1
            for problem in problems:
                print(f"FAIL {info.store_path}: {problem}")
        elif args.verbose:
            print(f"ok   {info.store_path}")
    print(f"checked {checked} paths: {failed} with problems", file=sys.stderr)
    return 1 if failed else 0


# ---- wiring ----------------------------------------------------------------

Command = Callable[[Store, argparse.Namespace], Awaitable[int]]


__all__ = ["DEFAULT_SOCKET", "Command", "CommandError", "Store", "connect", "resolve"]
