"""``PathInfoService`` backends (``memory``, ``sqlite``) and wrappers (``cache``, ``signing``)."""

from __future__ import annotations
