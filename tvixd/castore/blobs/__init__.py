"""``BlobService`` backends: ``memory`` and ``objectstore`` (one file per blob)."""

from __future__ import annotations
