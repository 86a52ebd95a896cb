"""The content-addressed store's castore half: blobs and directories (tvix.castore.v1).

Domain types (``model``), service interfaces (``protocols``), blob streaming
helpers (``streams``), the one wire converter (``wire``) and the gRPC client
adapters (``grpc``).  Local backends and the gRPC servers live in
``tvixd.castore``.
"""

from __future__ import annotations

from clients.castore.model import (
    B3Digest,
    Directory,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
)
from clients.castore.protocols import BlobService, DirectoryPutter, DirectoryService
from clients.castore.streams import CHUNK_SIZE, BlobReader, put_bytes, read_blob

__all__ = [
    "CHUNK_SIZE",
    "B3Digest",
    "BlobReader",
    "BlobService",
    "Directory",
    "DirectoryNode",
    "DirectoryPutter",
    "DirectoryService",
    "FileNode",
    "Node",
    "SymlinkNode",
    "put_bytes",
    "read_blob",
]
