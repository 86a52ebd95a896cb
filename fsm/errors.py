"""Errors raised by the lifecycle machines.

Two kinds of wrong input, kept apart on purpose:

* an event the current state does not allow (``build_finished`` while in
  ``waiting``, anything in a final state, an unknown event name) raises the
  library's :class:`TransitionNotAllowed`, re-exported here; the state and the
  model are unchanged;
* an allowed event whose facts are wrong (a missing, misspelt or mistyped
  keyword argument, or a positional one) raises :class:`InvalidFacts`; a saved
  record that breaks an invariant raises :class:`InvalidRecord`.  Both are
  ``ValueError`` subclasses and name the event or field and the value.
"""

from __future__ import annotations

from statemachine.exceptions import TransitionNotAllowed

__all__ = ["FsmError", "InvalidFacts", "InvalidRecord", "TransitionNotAllowed"]


class FsmError(ValueError):
    """Bad input to a lifecycle machine (other than a forbidden event)."""


class InvalidFacts(FsmError):
    """An event was sent with facts that do not match its declaration."""


class InvalidRecord(FsmError):
    """A saved record (or its dict form) cannot be a state of its machine."""
