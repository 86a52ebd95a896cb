"""Build log lines: stored per derivation and attempt, and appended to the jobs' event logs.

A :class:`BuildLog` is the ``on_log`` sink of one build attempt.  Each line
(truncated to :data:`MAX_LINE` bytes) is enqueued in the journal as a stored
line of the derivation *and* as a ``LogLine`` event of every running job that
needs the derivation at that moment; watchers get it once it is committed.

Storage is capped per build attempt: when an attempt's stored lines exceed
``cap`` bytes (default :data:`LOG_CAP`, 10 MiB), the oldest are dropped until
it fits, so the stored log keeps the *last* 10 MiB (where a failure's cause
is).  Events that pointed at dropped lines replay as
``tvixd.journal.DROPPED_LINE``.  With ``reset`` (the first build of a
derivation started afresh) the derivation's previous stored log is dropped;
a build resumed after a restart appends to it.

The sink applies backpressure: when the journal's open batch is large, it
waits for a commit before taking the next line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from clients.build.errors import format_tail
from tvixd.coordinator.graph import Node
from tvixd.journal.journal import Journal
from tvixd.journal.model import LogLine

__all__ = ["LOG_CAP", "MAX_LINE", "BuildLog"]

LOG_CAP = 10 << 20
"""Bytes of log stored per build attempt (the newest are kept)."""
MAX_LINE = 64 << 10
"""Longest line stored; longer lines are cut."""
TAIL_LINES = 25
"""Lines kept for the ``log_tail`` fact of a failed build."""
BACKPRESSURE_ROWS = 5000


class BuildLog:
    """The log sink of one build attempt of ``node`` (see the module docstring)."""

    def __init__(
        self,
        journal: Journal,
        node: Node,
        attempt: int,
        clock: Callable[[], int],
        *,
        cap: int = LOG_CAP,
        reset: bool = False,
    ) -> None:
        self._journal = journal
        self._node = node
        self._attempt = attempt
        self._clock = clock
        self._cap = cap
        self._sizes: deque[tuple[int, int]] = deque()
        self._stored = 0
        self.tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        self.lines = 0
        if reset:
            journal.reset_log(node.key)

    def __repr__(self) -> str:
        return f"BuildLog({self._node.key}, attempt {self._attempt}, {self.lines} lines)"

    async def __call__(self, line: bytes) -> None:
        line = bytes(line[:MAX_LINE])
        self.lines += 1
        self.tail.append(line)
        journal = self._journal
        stored = journal.append_log(
            sorted(self._node.jobs), LogLine(self._node.key, line, self._attempt), self._clock()
        )
        self._sizes.append((stored.id, len(line)))
        self._stored += len(line)
        if self._stored > self._cap:
            keep = self._cap - self._cap // 10  # trim to 90%: one delete per ~cap/10 bytes
            while self._stored > keep and self._sizes:
                _, size = self._sizes.popleft()
                self._stored -= size
            below = self._sizes[0][0] if self._sizes else stored.id + 1
            journal.trim_log(self._node.key, self._attempt, below)
        if journal.pending >= BACKPRESSURE_ROWS:
            await journal.commit()

    def tail_text(self) -> str:
        """The last lines, formatted for a failure message."""
        return format_tail(self.tail)
