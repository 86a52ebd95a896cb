"""Test data for the castore suites: vector decoding and small graphs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from grpclib.server import Server

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, SymlinkNode
from clients.castore.protocols import BlobService, DirectoryService
from tests.grpcserver import closing_connections
from tvixd.castore.server import castore_servicers

EMPTY_DIGEST_HEX = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def directory_from_json(spec: dict[str, Any]) -> Directory:
    """A Directory from the vectors' JSON form (names and targets UTF-8, digests hex)."""
    return Directory(
        tuple(
            DirectoryNode(n["name"].encode(), bytes.fromhex(n["digest"]), n["size"])
            for n in spec["directories"]
        ),
        tuple(
            FileNode(n["name"].encode(), bytes.fromhex(n["digest"]), n["size"], n["executable"])
            for n in spec["files"]
        ),
        tuple(SymlinkNode(n["name"].encode(), n["target"].encode()) for n in spec["symlinks"]),
    )


def blob_from_spec(spec: dict[str, Any]) -> bytes:
    """A blob from blake3.json's ``blob`` spec."""
    if "hex" in spec:
        return bytes.fromhex(str(spec["hex"]))
    if "utf8" in spec:
        return str(spec["utf8"]).encode()
    if spec["generator"] == "mod251":
        return bytes(i % 251 for i in range(int(spec["length"])))
    if spec["generator"] == "range255_repeat":
        return bytes(range(255)) * int(spec["repeat"])
    raise AssertionError(f"unknown blob spec {spec}")


def file(name: bytes, data: bytes = b"", executable: bool = False) -> FileNode:
    return FileNode(name, B3Digest.of(data), len(data), executable)


def subdir(name: bytes, directory: Directory) -> DirectoryNode:
    return DirectoryNode(name, directory.digest(), directory.size())


def diamond() -> tuple[Directory, Directory, Directory, Directory, Directory]:
    """root -> {left, right}; left -> shared; right -> shared; shared -> leaf.

    Returns (leaf, shared, left, right, root), a valid leaves-first order.
    """
    leaf = Directory(files=(file(b"f", b"leaf"),))
    shared = Directory(directories=(subdir(b"leaf", leaf),), symlinks=(SymlinkNode(b"s", b"../x"),))
    left = Directory(directories=(subdir(b"shared", shared),), files=(file(b"l", b"left"),))
    right = Directory(directories=(subdir(b"also-shared", shared),), files=(file(b"r", b"right"),))
    root = Directory(directories=(subdir(b"a-left", left), subdir(b"b-right", right)))
    return leaf, shared, left, right, root


@asynccontextmanager
async def serve_unix(
    path: Path, blobs: BlobService, directories: DirectoryService
) -> AsyncIterator[Server]:
    """Our castore gRPC server on a unix socket for the duration of the block."""
    server = Server(castore_servicers(blobs, directories))
    async with closing_connections(server):
        await server.start(path=str(path))
        try:
            yield server
        finally:
            server.close()
            await server.wait_closed()
