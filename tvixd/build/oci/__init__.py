"""The OCI builder: bundles (``bundle``), runc (``runner``), shared inputs
(``materialize``), output checks (``outputs``) and the service (``service``)."""

from __future__ import annotations

from tvixd.build.oci.bundle import SandboxConfig
from tvixd.build.oci.service import OciBuildService, OciConfig

__all__ = ["OciBuildService", "OciConfig", "SandboxConfig"]
