"""The error hierarchy shared by every store service, local or remote.

Services raise these and nothing else for expected failures; each gRPC
boundary translates them to a status code in exactly one place (server side)
and back again (client side):

=================  ===================  ==========================================
exception          gRPC status          meaning
=================  ===================  ==========================================
``InvalidRequest``  ``INVALID_ARGUMENT``  the caller's input breaks a rule
``NotFound``        ``NOT_FOUND``         something required is absent
``StorageError``    ``INTERNAL``          the backend failed, or returned garbage
=================  ===================  ==========================================

Lookups that may legitimately miss return ``None`` instead of raising
``NotFound``; ``NotFound`` is for things an operation *needs*.  Messages name
the rule that was broken and the offending value.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error a store service raises on purpose."""


class InvalidRequest(StoreError, ValueError):
    """Input that breaks a rule; the message names the rule and the value."""


class NotFound(StoreError, LookupError):
    """Something an operation requires is absent."""


class StorageError(StoreError):
    """The backend failed (I/O, corruption, an unreachable or misbehaving remote)."""
