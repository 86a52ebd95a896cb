"""Documentation generated from the machine classes: mermaid diagrams, event tables.

Walks the class's states in declaration order and each state's transitions in
declaration order, so the text is deterministic and changes only when the
machine does.  A transition is labelled ``event [guard]``: guards are the
``cond``/``unless`` callables, named by their function name without leading
underscores (``unless`` as ``not name``), joined with ``and``.  The event
tables list, per event, its transitions and the facts it declares.
"""

from __future__ import annotations

from typing import Any

from statemachine import StateChart
from statemachine.transition import Transition

from fsm.base import LifecycleMachine


def _guard(transition: Transition) -> str:
    terms = []
    for spec in transition.cond:
        name = getattr(spec.func, "__name__", str(spec.func)).lstrip("_")
        terms.append(name if spec.expected_value else f"not {name}")
    return " and ".join(terms)


def _label(transition: Transition) -> str:
    events = " | ".join(str(event) for event in transition.events)
    guard = _guard(transition)
    return f"{events} [{guard}]" if guard else events


def mermaid(machine: type[StateChart[Any]]) -> str:
    """The mermaid source of ``machine``'s states and transitions, newline-terminated."""
    initial = machine.initial_state
    if initial is None:
        raise ValueError(f"{machine.__name__} has no initial state")
    lines = ["stateDiagram-v2", f"    [*] --> {initial.id}"]
    for state in machine.states:
        for transition in state.transitions:
            target = transition.target
            if target is None or transition.initial:
                continue
            lines.append(f"    {state.id} --> {target.id} : {_label(transition)}")
    lines += [f"    {state.id} --> [*]" for state in machine.states if state.final]
    return "\n".join(lines) + "\n"


def events_table(machine: type[LifecycleMachine[Any]]) -> str:
    """A markdown table of ``machine``'s events: transitions and declared facts."""
    rows = ["| event | transitions | facts |", "|---|---|---|"]
    for event, facts in machine.event_facts.items():
        moves = [
            f"{state.id} → {t.target.id}" + (f" [{_guard(t)}]" if _guard(t) else "")
            for state in machine.states
            for t in state.transitions
            if t.target is not None and event in (str(e) for e in t.events)
        ]
        described = [
            f"`{f.name}: {f.type.__name__}`{'' if f.required else ' (optional)'} — {f.doc}"
            for f in facts
        ]
        rows.append(f"| `{event}` | {'<br>'.join(moves)} | {'<br>'.join(described) or '—'} |")
    return "\n".join(rows) + "\n"
