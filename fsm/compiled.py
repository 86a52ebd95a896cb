"""A machine class compiled once and applied to many models: the daemon's fast path.

python-statemachine resolves every callback per machine *instance* and runs a
general SCXML engine per event: a ``DerivationMachine`` costs about 0.3-0.5 ms
and 67 KiB to build and about 0.1 ms per event (docs/fsm.md, "Cost").  A
coordinator driving thousands of derivations needs none of that per
derivation: the transitions, guards, actions and listeners are the same for
all of them; only the model differs.

``CompiledMachine(DerivationMachine, listeners=[journal])`` reads the class's
declaration once — its states, each state's transitions in declaration order,
their ``cond``/``unless`` guards and inline ``on`` actions, the events' facts —
resolves the listeners' hooks once, and then ``send(model, event, **facts)``
applies an event to any model of that class, in a few microseconds and
without allocating a machine.

Contract — identical to ``Machine.from_record(record, listeners=...).send(event,
**facts)`` on the same model (``tests/fsm/test_compiled.py`` checks it hook by
hook against the library on random event sequences):

* the same transition is taken (guards in declaration order, first match),
  the model ends up with the same data and state;
* the same errors: ``TransitionNotAllowed`` (same message) for an event the
  state does not allow, an unknown event or any event in a final state —
  checked before the facts; ``InvalidFacts`` for facts that do not match the
  event's declaration; whatever a guard, action or listener raises;
* events are atomic: when anything raises, every field of the model (a
  dataclass instance; others are refused with ``TypeError``), ``state``
  included, is put back as it was, and the exception propagates;
* listener hooks have the library's names and run in the library's order
  (``before_transition``, ``before_<event>``, ``on_exit_state``,
  ``on_exit_<source>``, ``on_transition``, ``on_<event>``, ``on_enter_state``,
  ``on_enter_<target>``, ``after_<event>``, ``after_transition``; exit and
  enter hooks are skipped for internal self-transitions), listeners in the
  order given, and get the arguments they name: ``event`` (the ``Event``, a
  ``str``), ``source``, ``target``, ``state`` (``State`` objects),
  ``model``, ``transition`` and the event's facts.

What it deliberately does not do: there is no machine instance, so a hook
asking for ``machine`` or ``event_data`` (or taking ``*args``/``**kwargs``, or
an argument that is none of the above) is refused with ``TypeError`` when the
listener is given; listeners are fixed at construction; a model is not
*activated* (``send`` needs a model already in a state, as ``from_record``
leaves it: no ``on_enter_<initial>`` is run); machines with compound or
parallel states, eventless transitions, validators or string guards are
refused.  Guards and actions may use ``self.model`` only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Generic, TypeVar

from statemachine import Event, State
from statemachine.callbacks import CallbackSpec
from statemachine.orderedset import OrderedSet
from statemachine.transition import Transition

from fsm.base import Fact, LifecycleMachine, check_facts
from fsm.errors import TransitionNotAllowed

__all__ = ["CompiledMachine"]

ModelT = TypeVar("ModelT")

_CONTEXT = frozenset({"event", "source", "target", "state", "model", "transition"})
_NEVER = frozenset({"machine", "event_data", "previous_configuration", "new_configuration"})


@dataclass(frozen=True, slots=True)
class _Call:
    """One callable and the argument names it takes; ``bound`` ones get the model holder first."""

    func: Callable[..., Any]
    names: tuple[str, ...]
    bound: bool
    expected: bool | None = None


@dataclass(frozen=True, slots=True)
class _Step:
    """One transition, compiled: its guards and its hooks, phase by phase."""

    transition: Transition
    source: State
    target: State
    internal: bool
    guards: tuple[_Call, ...]
    before: tuple[_Call, ...]
    exit: tuple[_Call, ...]
    on: tuple[_Call, ...]
    enter: tuple[_Call, ...]
    after: tuple[_Call, ...]


class _Self:
    """What a guard or action sees as ``self``: only ``model``."""

    __slots__ = ("model",)

    def __init__(self, model: object) -> None:
        self.model = model


def _parameters(func: Callable[..., Any], *, skip_self: bool) -> list[inspect.Parameter]:
    params = list(inspect.signature(func).parameters.values())
    return params[1:] if skip_self else params


class CompiledMachine(Generic[ModelT]):
    """``machine``'s declaration compiled once, applied to many models (see the module docstring)."""

    def __init__(
        self, machine: type[LifecycleMachine[ModelT]], *, listeners: Iterable[object] = ()
    ) -> None:
        self._machine = machine
        self._listeners = list({id(listener): listener for listener in listeners}.values())
        self._facts: dict[str, tuple[Fact, ...]] = dict(machine.event_facts)
        # per event: the declared facts by name and the required ones (the check's fast path)
        self._fact_types = {
            event: {fact.name: fact.type for fact in facts} for event, facts in self._facts.items()
        }
        self._required = {
            event: frozenset(fact.name for fact in facts if fact.required)
            for event, facts in self._facts.items()
        }
        self._allowed = _CONTEXT | {fact.name for facts in self._facts.values() for fact in facts}
        self._states: dict[Any, State] = dict(machine.states_map)
        self._events: dict[str, Event] = {str(event): event for event in machine._events}
        # the model types seen, with their dataclass fields
        self._model_types: dict[type, tuple[str, ...]] = {}
        self._check_machine()
        self._check_listeners()
        self._table: dict[Any, dict[str, tuple[_Step, ...]]] = {}
        for state in machine.states:
            by_event: dict[str, list[_Step]] = {}
            for transition in state.transitions:
                step = self._compile(state, transition)
                by_event.setdefault(str(next(iter(transition.events))), []).append(step)
            self._table[state.value] = {event: tuple(steps) for event, steps in by_event.items()}

    def __repr__(self) -> str:
        names = ", ".join(type(listener).__name__ for listener in self._listeners)
        return f"CompiledMachine({self._machine.__name__}, listeners=[{names}])"

    # -- compiling -----------------------------------------------------------------------------

    def _check_machine(self) -> None:
        machine = self._machine
        name = machine.__name__
        if machine.prepare_event is not LifecycleMachine.prepare_event:
            raise TypeError(f"{name} overrides prepare_event: cannot be compiled")
        for state in self._states.values():
            if state.parent is not None or state.states or state.history or not state.is_atomic:
                raise TypeError(f"{name}: state {state.id} is not a flat state: cannot be compiled")
        for conventions in self._conventions():
            found = sorted(c for c in conventions if c != "prepare_event" and hasattr(machine, c))
            if found:
                raise TypeError(f"{name} defines the hook(s) {', '.join(found)} itself")

    def _check_listeners(self) -> None:
        unsupported = {
            name
            for conventions in self._conventions()
            for name in conventions
            if name == "prepare_event" or name.startswith("on_invoke_")
        }
        for listener in self._listeners:
            for name in sorted(unsupported):
                if hasattr(listener, name):
                    raise TypeError(
                        f"listener {listener!r}: hook {name} is not supported by CompiledMachine"
                    )

    def _conventions(self) -> Iterable[set[str]]:
        yield set(self._machine._specs.conventional_specs)
        for state in self._states.values():
            yield set(state._specs.conventional_specs)
            for transition in state.transitions:
                yield set(transition._specs.conventional_specs)

    def _compile(self, state: State, transition: Transition) -> _Step:
        where = f"{self._machine.__name__}: {transition}"
        events = [str(event) for event in transition.events]
        target = transition.target
        if len(events) != 1 or target is None or len(transition.targets) != 1:
            raise TypeError(f"{where}: needs exactly one event and one target to be compiled")
        if any(True for _ in transition.validators):
            raise TypeError(f"{where}: validators cannot be compiled")
        guards = []
        for spec in transition.cond:
            if not callable(spec.func) or spec.is_convention:
                raise TypeError(f"{where}: guard {spec.func!r} is not a function of the class")
            guards.append(self._inline(spec, where, bool(spec.expected_value)))
        return _Step(
            transition=transition,
            source=state,
            target=target,
            internal=transition.internal and transition.is_self,
            guards=tuple(guards),
            before=self._phase(transition.before, where),
            exit=self._phase(state.exit, where),
            on=self._phase(transition.on, where),
            enter=self._phase(target.enter, where),
            after=self._phase(transition.after, where),
        )

    def _phase(self, specs: Iterable[CallbackSpec], where: str) -> tuple[_Call, ...]:
        calls: list[_Call] = []
        for spec in sorted(specs, key=lambda s: s.priority):  # stable: declaration order within
            if not spec.is_convention:
                calls.append(self._inline(spec, where, None))
                continue
            for listener in self._listeners:
                hook = getattr(listener, spec.func, None)
                if hook is not None:
                    calls.append(self._hook(listener, spec.func, hook))
        return tuple(calls)

    def _inline(self, spec: CallbackSpec, where: str, expected: bool | None) -> _Call:
        func = spec.func
        if not inspect.isfunction(func):
            raise TypeError(f"{where}: {func!r} is not a plain function of the class")
        names = self._names(func, f"{where}: {func.__name__}", skip_self=True)
        return _Call(func, names, bound=True, expected=expected)

    def _hook(self, listener: object, name: str, hook: object) -> _Call:
        where = f"listener {listener!r}: hook {name}"
        if not callable(hook):
            raise TypeError(f"{where} is not callable")
        return _Call(hook, self._names(hook, where, skip_self=False), bound=False)

    def _names(self, func: Callable[..., Any], where: str, *, skip_self: bool) -> tuple[str, ...]:
        names = []
        for param in _parameters(func, skip_self=skip_self):
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise TypeError(f"{where} takes *args or **kwargs: name the arguments it needs")
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"{where}: positional-only argument {param.name!r}")
            if param.name in _NEVER or param.name not in self._allowed:
                raise TypeError(
                    f"{where} asks for {param.name!r}, which a CompiledMachine does not provide "
                    f"(it provides {', '.join(sorted(self._allowed))})"
                )
            names.append(param.name)
        return tuple(names)

    def _check_model(self, model: object) -> None:
        kind = type(model)
        for conventions in self._conventions():
            found = sorted(c for c in conventions if hasattr(kind, c))
            if found:
                raise TypeError(f"{kind.__name__} defines the hook(s) {', '.join(found)} itself")
        if not is_dataclass(kind):
            raise TypeError(f"a model must be a dataclass instance, got {kind.__name__}")
        self._model_types[kind] = tuple(f.name for f in fields(kind))

    # -- running ---------------------------------------------------------------------------

    def send(self, model: ModelT, event: str, /, **facts: object) -> None:
        """Apply ``event`` with ``facts`` to ``model`` (see the module docstring for the contract)."""
        if type(model) not in self._model_types:
            self._check_model(model)
        names = self._model_types[type(model)]
        current = getattr(model, "state")  # noqa: B009 - ModelT is only known to have it
        by_event = self._table.get(current)
        if by_event is None:
            raise ValueError(f"{model!r} is not in a state of {self._machine.__name__}")
        steps = by_event.get(event)
        source = self._states[current]
        if not steps:
            known = self._events.get(event) or Event(id=event, name=event)
            raise TransitionNotAllowed(known, OrderedSet([source]))
        if not self._plain_facts(event, facts):  # check again, to say what is wrong
            check_facts(self._machine.subject_of(model), event, (), facts, self._facts[event])
        kwargs: dict[str, Any] = dict(facts)
        kwargs["model"] = model
        kwargs["event"] = self._events[event]
        kwargs["source"] = kwargs["state"] = source
        holder = _Self(model)
        for step in steps:
            kwargs["transition"] = step.transition
            kwargs["target"] = step.target
            if all(bool(_call(g, holder, kwargs)) is g.expected for g in step.guards):
                break
        else:
            raise TransitionNotAllowed(self._events[event], OrderedSet([source]))
        # a snapshot of the fields, put back when anything raises (cheaper than copy.copy)
        saved = [getattr(model, name) for name in names]
        try:
            self._run(step, holder, model, kwargs)
        except BaseException:
            for name, value in zip(names, saved, strict=True):
                setattr(model, name, value)
            raise

    def _plain_facts(self, event: str, facts: dict[str, object]) -> bool:
        """Whether ``facts`` are all declared for ``event``, of their types, the required ones given."""
        types = self._fact_types[event]
        for name, value in facts.items():
            kind = types.get(name)
            if kind is None or not isinstance(value, kind):
                return False
        return self._required[event] <= facts.keys()

    @staticmethod
    def _run(step: _Step, holder: _Self, model: object, kwargs: dict[str, Any]) -> None:
        for call in step.before:
            _call(call, holder, kwargs)
        if not step.internal:
            for call in step.exit:
                _call(call, holder, kwargs)
        for call in step.on:
            _call(call, holder, kwargs)
        setattr(model, "state", step.target.value)  # noqa: B010 - see send
        kwargs["state"] = step.target
        if not step.internal:
            for call in step.enter:
                _call(call, holder, kwargs)
        for call in step.after:
            _call(call, holder, kwargs)


def _call(call: _Call, holder: _Self, kwargs: dict[str, Any]) -> Any:
    args = {name: kwargs[name] for name in call.names if name in kwargs}
    if call.bound:
        return call.func(holder, **args)
    return call.func(**args)
