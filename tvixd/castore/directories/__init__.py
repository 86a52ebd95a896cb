"""``DirectoryService`` backends: ``memory`` and ``sqlite``; ``graph`` has their shared validation."""

from __future__ import annotations
