"""Builds (tvix.build.v1 and our streaming tvixd.v1 method): domain types, interface, adapters.

Domain types (``model``), errors (``errors``), the service interface
(``protocols``), the one wire converter (``wire``) and the gRPC client adapter
(``grpc``).  The builders themselves (OCI/runc, dummy) and the gRPC servers
live in ``tvixd.build``.
"""

from __future__ import annotations

from clients.build.errors import NO_EXIT_CODE, BuildError, BuildFailed
from clients.build.model import AdditionalFile, Build, BuildConstraints, BuildRequest, EnvVar
from clients.build.protocols import BuildService, LogSink

__all__ = [
    "NO_EXIT_CODE",
    "AdditionalFile",
    "Build",
    "BuildConstraints",
    "BuildError",
    "BuildFailed",
    "BuildRequest",
    "BuildService",
    "EnvVar",
    "LogSink",
]
