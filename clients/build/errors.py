"""The errors a build service raises on purpose, besides the shared store errors.

==========================  =====================  ======================================
exception                   gRPC status            meaning
==========================  =====================  ======================================
``InvalidRequest``          ``INVALID_ARGUMENT``   the request breaks a rule (clients.errors)
``NotFound``                ``NOT_FOUND``          an input's data is absent (clients.errors)
``BuildFailed``             ``ABORTED``            the build ran and failed
``BuildError``              ``INTERNAL``           the builder could not run the build
==========================  =====================  ======================================

The statuses are those of ``DoBuild``; the streaming method reports a
``BuildFailed`` as a ``BuildFailure`` event instead (with its exit code), and
the others as the same statuses.  Cancellation is not an error: cancelling the
task that awaits a build stops the build.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NO_EXIT_CODE", "BuildError", "BuildFailed", "format_tail"]

NO_EXIT_CODE = -1
"""``BuildFailed.exit_code`` when the builder did not exit by itself (killed, never started)."""


def format_tail(lines: Iterable[bytes]) -> str:
    """Log lines for a message: decoded leniently, one per line, indented like Nix does."""
    return "".join(
        "       > " + line.decode("utf-8", "backslashreplace") + "\n" for line in lines
    ).rstrip("\n")


class BuildError(Exception):
    """The builder could not run a build (runc missing, the sandbox failed, a transport error)."""


class BuildFailed(BuildError):
    """A build ran and failed.

    ``reason`` says why (a non-zero exit, a missing output, a timeout, a hash
    mismatch); ``exit_code`` is the builder's exit status when it exited by
    itself (``0`` for a missing output or a hash mismatch, ``128 + signal``
    when killed by a signal it did not get from us) and :data:`NO_EXIT_CODE`
    otherwise; ``log_tail`` holds the last log lines, which ``str()`` shows.
    """

    def __init__(
        self, reason: str, *, exit_code: int = NO_EXIT_CODE, log_tail: Iterable[bytes] = ()
    ) -> None:
        self.reason = reason
        self.exit_code = exit_code
        self.log_tail = tuple(log_tail)
        message = reason
        if self.log_tail:
            message += f"\nlast {len(self.log_tail)} log lines:\n" + format_tail(self.log_tail)
        super().__init__(message)
