"""The server-side status boundary: domain errors raised in a gRPC handler → gRPC status.

Every servicer (castore, store, build) wraps its handlers in
:func:`status_boundary`, the one place this translation happens:

=================================  =====================================
raised in the handler              status (message)
=================================  =====================================
``GRPCError``                      passed through unchanged
``InvalidRequest``                 ``INVALID_ARGUMENT`` (its message)
``NotFound``                       ``NOT_FOUND`` (its message)
``BuildFailed``                    ``ABORTED`` (its message)
``StorageError``, ``BuildError``   ``INTERNAL`` (``method: message``; logged)
anything else                      ``INTERNAL`` (``method: internal error (Type)``,
                                   with ``: message`` when ``reveal``;
                                   logged with its traceback)
=================================  =====================================

``extra`` maps further exception types of one servicer to statuses (their
message is sent as is), checked before the table above.  Cancellation and
other ``BaseException``s are never translated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from clients.build.errors import BuildError, BuildFailed
from clients.errors import InvalidRequest, NotFound, StorageError

__all__ = ["status_boundary"]

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[Exception], Status], ...] = (
    (InvalidRequest, Status.INVALID_ARGUMENT),
    (NotFound, Status.NOT_FOUND),
    (BuildFailed, Status.ABORTED),  # before BuildError, its base class
)
_INTERNAL = (StorageError, BuildError)


@contextmanager
def status_boundary(
    method: str,
    *,
    reveal: bool = False,
    extra: Mapping[type[Exception], Status] | None = None,
) -> Iterator[None]:
    """Translate errors raised inside the block to ``GRPCError`` (see the module docstring).

    ``method`` (``"BlobService.Read"``) prefixes internal errors' messages and
    log lines.  ``reveal`` sends an unexpected exception's message too, not
    just its type.
    """
    try:
        yield
    except GRPCError:
        raise
    except Exception as exc:
        for kind, status in (*(extra or {}).items(), *_STATUS):
            if isinstance(exc, kind):
                raise GRPCError(status, str(exc)) from exc
        if isinstance(exc, _INTERNAL):
            log.error("%s failed: %s", method, exc)
            raise GRPCError(Status.INTERNAL, f"{method}: {exc}") from exc
        log.exception("%s: unexpected error", method)
        detail = f"{type(exc).__name__}: {exc}" if reveal else type(exc).__name__
        raise GRPCError(Status.INTERNAL, f"{method}: internal error ({detail})") from exc
