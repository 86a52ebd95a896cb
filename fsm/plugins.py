"""Ready-made listeners.  :class:`FailureRecorder` is the CI plugin of docs/fsm.md.

A listener is any object whose methods are named after the library's
conventions (``on_enter_<state>``, ``after_<event>``, ``on_transition``, ...);
attach it with ``DerivationMachine(..., listeners=[obj])`` or
``machine.add_listener(obj)``.  Each method declares the arguments it wants
(``model``, ``event``, ``source``, ``target``, and the event's facts such as
``log_tail``) and gets exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsm.derivation import DerivationModel
from fsm.states import DrvState


@dataclass(frozen=True, slots=True)
class FailedDerivation:
    """One derivation that ended in ``failed`` or ``dependency_failed``."""

    drv_path: str
    state: DrvState
    reason: str
    attempt: int
    log_tail: str
    """The last lines of the log reported with the failure; "" when none was."""


class FailureRecorder:
    """Records every derivation that fails, with its reason and log tail.

    Attach one instance to every derivation machine of a CI run; read
    :attr:`failures` (in the order the failures happened) or :meth:`report`
    at the end.  The log tail arrives as the ``log_tail`` fact of
    ``build_finished`` or ``fail``; only its last ``tail_lines`` lines are kept.
    Events of machines other than derivation machines are ignored.
    """

    def __init__(self, *, tail_lines: int = 20) -> None:
        if tail_lines < 0:
            raise ValueError(f"tail_lines must be >= 0, got {tail_lines}")
        self._tail_lines = tail_lines
        self._failures: list[FailedDerivation] = []

    @property
    def failures(self) -> tuple[FailedDerivation, ...]:
        """The failures recorded so far, oldest first."""
        return tuple(self._failures)

    def on_enter_failed(self, model: object, log_tail: str = "") -> None:
        """Library hook: the derivation just entered ``failed``."""
        self._record(model, DrvState.FAILED, log_tail)

    def on_enter_dependency_failed(self, model: object) -> None:
        """Library hook: the derivation just entered ``dependency_failed``."""
        self._record(model, DrvState.DEPENDENCY_FAILED, "")

    def report(self) -> str:
        """A plain-text summary for a CI log: one block per failure."""
        blocks = []
        for f in self._failures:
            head = f"{f.state}: {f.drv_path} (attempt {f.attempt}): {f.reason}"
            tail = "".join(f"    | {line}\n" for line in f.log_tail.splitlines())
            blocks.append(head + "\n" + tail)
        return "".join(blocks)

    def _record(self, model: object, state: DrvState, log_tail: str) -> None:
        if not isinstance(model, DerivationModel):
            return
        lines = log_tail.splitlines()[-self._tail_lines :] if self._tail_lines else []
        self._failures.append(
            FailedDerivation(
                drv_path=model.drv_path,
                state=state,
                reason=model.failure_reason or "",
                attempt=model.attempt,
                log_tail="\n".join(lines),
            )
        )
