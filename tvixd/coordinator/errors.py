"""Coordinator errors besides the shared ``clients.errors`` (``InvalidRequest``, ``NotFound``).

``tvixd.api`` maps :class:`Unavailable` to ``UNAVAILABLE``; the others as
``tvixd.castore.server.status_boundary`` does.
"""

from __future__ import annotations

__all__ = ["Unavailable"]


class Unavailable(Exception):
    """The coordinator cannot take the request now (not started yet, or shutting down)."""
