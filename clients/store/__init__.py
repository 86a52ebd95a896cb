"""The store's path-info half (tvix.store.v1): store paths mapped onto castore root nodes.

Domain type (``model.PathInfo``), service interfaces (``protocols``), the one
wire converter (``wire``) and the gRPC client adapter (``grpc``).  Local
backends, wrappers and the gRPC server live in ``tvixd.store``.
"""

from __future__ import annotations

from clients.store.model import PathInfo, with_name
from clients.store.protocols import NarCalculator, PathInfoService

__all__ = ["NarCalculator", "PathInfo", "PathInfoService", "with_name"]
