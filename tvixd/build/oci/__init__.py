"""The OCI builder: bundles (``bundle``), runc and its shim (``runner``, ``shim``),
shared inputs (``materialize``) linked into each build (``farm``), output
checks (``outputs``) and the service (``service``)."""

from __future__ import annotations

from tvixd.build.oci.bundle import SandboxConfig
from tvixd.build.oci.service import OciBuildService, OciConfig

__all__ = ["OciBuildService", "OciConfig", "SandboxConfig"]
