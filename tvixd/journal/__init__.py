"""The coordinator's persistence: jobs, derivation states, event logs and build logs in SQLite.

See :mod:`tvixd.journal.journal` for how writes are batched and committed,
:mod:`tvixd.journal.db` for the schema and :mod:`tvixd.journal.model` for the
domain types.
"""

from __future__ import annotations

from tvixd.journal.db import DROPPED_LINE, Batch, Recovered, Unfinished
from tvixd.journal.journal import COMMIT_TIMEOUT, Journal, JournalClosed, JournalError
from tvixd.journal.model import (
    LIMITS,
    DerivationStateChanged,
    DrvPathsSource,
    EventBody,
    JobEvent,
    JobInfo,
    JobOutput,
    JobSpec,
    JobStateChanged,
    Limits,
    LogLine,
    NixFileSource,
    StoredLogLine,
)

__all__ = [
    "COMMIT_TIMEOUT",
    "DROPPED_LINE",
    "LIMITS",
    "Batch",
    "DerivationStateChanged",
    "DrvPathsSource",
    "EventBody",
    "JobEvent",
    "JobInfo",
    "JobOutput",
    "JobSpec",
    "JobStateChanged",
    "Journal",
    "JournalClosed",
    "JournalError",
    "Limits",
    "LogLine",
    "NixFileSource",
    "Recovered",
    "StoredLogLine",
    "Unfinished",
]
