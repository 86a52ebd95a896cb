"""What both lifecycle machines share: the library settings and fact checking.

Facts are the keyword arguments an event carries (``build_finished(success=False,
retryable=True)``).  Each machine declares, per event, which facts it takes in
``event_facts``; :meth:`LifecycleMachine.prepare_event` checks every event
against that declaration before any guard runs, so a misspelt or mistyped fact
is an :class:`~fsm.errors.InvalidFacts`, never a silently taken wrong branch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar, Self, TypeVar, cast

from statemachine import StateChart
from statemachine.event_data import EventData

from fsm.errors import InvalidFacts

ModelT = TypeVar("ModelT")


@dataclass(frozen=True, slots=True)
class Fact:
    """One keyword argument an event takes: its name, type (bool or str), whether required."""

    name: str
    type: type[bool] | type[str]
    required: bool
    doc: str


def check_facts(
    subject: str,
    event: str,
    args: tuple[object, ...],
    kwargs: Mapping[str, object],
    declared: Iterable[Fact],
) -> None:
    """Raise :class:`InvalidFacts` unless ``kwargs`` match ``declared`` exactly.

    Positional arguments are refused (facts are named); every required fact must
    be present, every given fact declared and of its declared type.
    """
    facts = {fact.name: fact for fact in declared}
    if args:
        raise InvalidFacts(
            f"{event} for {subject}: facts are keyword arguments, got positional {args!r}"
        )
    unknown = sorted(set(kwargs) - set(facts))
    if unknown:
        raise InvalidFacts(
            f"{event} for {subject}: unknown fact(s) {', '.join(unknown)} "
            f"(this event takes: {', '.join(facts) or 'no facts'})"
        )
    for fact in facts.values():
        if fact.name not in kwargs:
            if fact.required:
                raise InvalidFacts(
                    f"{event} for {subject}: missing the fact {fact.name} ({fact.doc})"
                )
            continue
        value = kwargs[fact.name]
        if not isinstance(value, fact.type):
            raise InvalidFacts(
                f"{event} for {subject}: fact {fact.name} must be a {fact.type.__name__}, "
                f"got {value!r}"
            )


class LifecycleMachine(StateChart[ModelT]):
    """Base of the lifecycle machines: strict settings, facts checked, listeners keyword-only.

    * ``allow_event_without_transition = False``: an event the current state
      does not allow raises ``TransitionNotAllowed`` (the 3.x ``StateChart``
      default is ``True``, which would silently ignore it);
    * ``catch_errors_as_events = False``: an exception in a guard, action or
      listener propagates to whoever sent the event, it does not become an
      ``error.execution`` event;
    * ``atomic_configuration_update = True``: the model's ``state`` changes in
      one step, between the ``on`` and the ``enter`` callbacks;
    * ``enable_self_transition_entries = False``: an *internal* self-transition
      (a report that changes nothing) does not re-enter its state.  External
      self-transitions (the build retry) still do.
    """

    allow_event_without_transition = False
    catch_errors_as_events = False
    atomic_configuration_update = True
    enable_self_transition_entries = False

    event_facts: ClassVar[Mapping[str, tuple[Fact, ...]]] = MappingProxyType({})
    """Per event id, the facts it takes.  Every event of the machine has an entry."""

    def __init__(self, model: ModelT, *, listeners: Iterable[object] = ()) -> None:
        super().__init__(model, state_field="state", listeners=list(listeners))

    def add_listener(self, *listeners: object) -> Self:
        """Attach listeners after construction (a typed wrapper of the library's method)."""
        super().add_listener(*listeners)  # type: ignore[no-untyped-call]
        return self

    def _processing_loop(self, caller_future: Any | None = None) -> Any:
        """Library funnel every event goes through (``send`` and ``sm.<event>(...)``).

        Overridden to make events atomic on the model: when anything raises while
        an event is processed (a forbidden event, bad facts, a guard, or a
        listener's callback in any phase, ``after_*`` included), the model's
        fields and state are put back as they were before the event, and the
        exception propagates.  The library alone would roll back only the state,
        and only for errors before the ``after`` phase.
        """
        saved = copy.copy(self.model)
        try:
            return super()._processing_loop(caller_future)
        except BaseException:
            self._restore(saved)
            raise

    def _restore(self, saved: ModelT) -> None:
        for field in fields(cast(Any, saved)):
            if field.name != "state":
                setattr(self.model, field.name, getattr(saved, field.name))
        state = getattr(saved, "state")  # noqa: B009 - ModelT is only known to have it
        self.current_state_value = state
        # Entering a final state stops the library's engine; a rolled-back one must run again.
        self._engine.running = not self.states_map[state].final

    @property
    def subject(self) -> str:
        """What this machine is about, for messages (a derivation path, a job id)."""
        return self.subject_of(self.model)

    @classmethod
    def subject_of(cls, model: ModelT) -> str:
        """What a machine driving ``model`` is about (see :attr:`subject`)."""
        raise NotImplementedError

    def prepare_event(self, *args: object, event_data: EventData) -> dict[str, Any]:
        """Library hook, run before the guards of each candidate transition: check the facts."""
        trigger = event_data.trigger_data
        event = str(trigger.event)
        if event.startswith("__"):  # the library's own "__initial__" activation
            return {}
        check_facts(self.subject, event, trigger.args, trigger.kwargs, self.event_facts[event])
        return {}
