"""The build service interface, shaped for the coordinator.

The coordinator needs a build's log lines while it runs and then either the
result or the reason it failed; it stops a build by cancelling the task that
awaits it.  One awaitable method gives exactly that, without the pitfalls of
async generators (a generator abandoned mid-stream leaves its cleanup to the
garbage collector):

    try:
        build = await builder.build(request, on_log=publish_line)
    except BuildFailed as failure:
        ...  # failure.reason, failure.exit_code, failure.log_tail

Every backend (the OCI builder, the dummy, the gRPC adapters) implements it;
the gRPC servers expose any implementation both as upstream's ``DoBuild``
and as our streaming ``tvixd.v1.StreamingBuildService/Build``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from clients.build.model import Build, BuildRequest

__all__ = ["BuildService", "LogSink"]

LogSink = Callable[[bytes], Awaitable[None]]
"""Receives one log line (without its ``\\n``) at a time, in order; awaited before the next."""


class BuildService(Protocol):
    """Runs builds."""

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        """Run ``request``; its result, with one node per output and the needles found.

        Log lines (stdout and stderr of the build, merged, as they come) go to
        ``on_log``.  Raises :class:`~clients.build.errors.BuildFailed` when the
        build ran and failed (non-zero exit, missing output, timeout, hash
        mismatch), :class:`~clients.errors.InvalidRequest` when the request
        cannot be run here (e.g. an unsupported system),
        :class:`~clients.errors.NotFound` when an input's data is absent, and
        :class:`~clients.build.errors.BuildError` when the builder itself
        failed.  Cancelling the awaiting task stops the build and cleans up;
        the cancellation propagates.  Outputs are in the castore only when the
        build succeeded.
        """
        ...

    async def close(self) -> None:
        """Release resources (idempotent).

        Builds still running belong to the tasks awaiting them: cancel those
        first (a daemon drains or cancels its builds before closing).
        """
        ...
