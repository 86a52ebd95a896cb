"""The one retry policy for builds: which failures another attempt may fix, and when to try.

Nix builds are deterministic, so a build that *ran and failed*
(:class:`~clients.build.errors.BuildFailed`: non-zero exit, missing output,
hash mismatch, the build's own timeout) is not retried, nor is a request the
builder or the translation rejects (``InvalidRequest``), an input missing
from the store (``NotFound``) or an input source that cannot be imported.
What another attempt may fix is the builder or a store failing
(:class:`~clients.build.errors.BuildError`, ``StorageError``) and our own
deadline expiring.  The derivation machine counts the attempts (its
``max_attempts``); this policy classifies and says how long to wait before
the next one (exponential, capped).  Store adapters retry their own transient
errors; pushes are not retried here (docs/fsm.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from clients.build.errors import BuildError, BuildFailed, format_tail
from clients.errors import InvalidRequest, NotFound, StorageError
from fsm import DEFAULT_MAX_ATTEMPTS
from tvixd.eval.protocol import EvaluationError

__all__ = ["Failure", "RetryPolicy", "classify"]


@dataclass(frozen=True)
class Failure:
    """Why a build attempt failed, and whether another attempt may fix it."""

    reason: str
    retryable: bool
    log_tail: str = ""


def classify(exc: Exception) -> Failure:
    """The :class:`Failure` an exception raised by a build attempt stands for."""
    if isinstance(exc, BuildFailed):
        return Failure(exc.reason, False, format_tail(exc.log_tail))
    if isinstance(exc, BuildError):
        return Failure(f"builder error: {exc}", True)
    if isinstance(exc, InvalidRequest):
        return Failure(f"cannot build: {exc}", False)
    if isinstance(exc, NotFound):
        return Failure(f"an input is missing: {exc}", False)
    if isinstance(exc, EvaluationError):
        return Failure(exc.message, False)
    if isinstance(exc, StorageError):
        return Failure(f"store error: {exc}", True)
    if isinstance(exc, TimeoutError):
        return Failure("the build did not finish within the coordinator's deadline", True)
    return Failure(f"internal error: {type(exc).__name__}: {exc}", False)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per derivation and the delay before attempt ``n`` (``n >= 2``)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"delays must not be negative: {self.base_delay}, {self.max_delay}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before starting ``attempt`` (0 for the first)."""
        if attempt <= 1:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 2)))
