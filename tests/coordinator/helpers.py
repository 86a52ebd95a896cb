"""Reading job events in tests, and builders wrapping the dummy one (fakes we own, not mocks)."""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import betterproto

from clients.build.errors import BuildError
from clients.build.model import Build, BuildRequest
from clients.build.protocols import BuildService, LogSink
from proto.gen.tvixd import v1 as tvixd_pb


def body(event: tvixd_pb.JobEvent) -> tuple[str, object]:
    """``("job_state" | "derivation_state" | "log", message)`` of an event."""
    which, value = betterproto.which_one_of(event, "event")
    return which, value


def drv_states(events: Iterable[tvixd_pb.JobEvent]) -> dict[str, list[str]]:
    """Per drv path (basename without hash), the derivation states in event order."""
    states: dict[str, list[str]] = {}
    for event in events:
        which, value = body(event)
        if which == "derivation_state":
            assert isinstance(value, tvixd_pb.DerivationStateChanged)
            name = value.drv_path.split("-", 1)[1].removesuffix(".drv")
            states.setdefault(name, []).append(value.state.name.lower())
    return states


def job_states(events: Iterable[tvixd_pb.JobEvent]) -> list[str]:
    """The job states in event order."""
    result = []
    for event in events:
        which, value = body(event)
        if which == "job_state":
            assert isinstance(value, tvixd_pb.JobStateChanged)
            result.append(value.state.name.lower())
    return result


def log_lines(events: Iterable[tvixd_pb.JobEvent]) -> list[bytes]:
    result = []
    for event in events:
        which, value = body(event)
        if which == "log":
            assert isinstance(value, tvixd_pb.LogLine)
            result.append(value.line)
    return result


def assert_gapless(events: list[tvixd_pb.JobEvent], start: int = 1) -> None:
    """Sequence numbers ``start, start + 1, …`` exactly; the last event is the job's final state."""
    assert [e.seq for e in events] == list(range(start, start + len(events)))
    which, _value = body(events[-1])
    assert which == "job_state", events[-1]


class FlakyBuilder:
    """Fails the first ``failures`` builds with a builder (infrastructure) error, then delegates."""

    def __init__(self, inner: BuildService, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        self.calls += 1
        if self.calls <= self.failures:
            raise BuildError(f"sandbox setup failed (injected failure {self.calls})")
        return await self.inner.build(request, on_log=on_log)

    async def close(self) -> None:
        await self.inner.close()


class ChattyBuilder:
    """Sends ``lines`` log lines (``line 0`` …), ``pause`` seconds apart, then delegates."""

    def __init__(self, inner: BuildService, lines: int, pause: float = 0.0) -> None:
        self.inner = inner
        self.lines = lines
        self.pause = pause
        self.started = anyio.Event()

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        self.started.set()
        for i in range(self.lines):
            if on_log is not None:
                await on_log(f"line {i}".encode())
            if self.pause:
                await anyio.sleep(self.pause)
        return await self.inner.build(request, on_log=on_log)

    async def close(self) -> None:
        await self.inner.close()
