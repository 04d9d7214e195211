"""Named guards and actions. Workflow definitions refer to them by name; code supplies them.

A guard is a pure function of a `GuardContext` returning True when the transition may go
ahead. Guards marked `payload=True` look at the trigger's payload, so they can only be
judged when the trigger is fired (they are skipped when listing `allowed_triggers`).

An action is an async function `(ActionContext) -> None` run inside the transition's
database transaction after the state machine has moved; it is where a trigger's payload
changes the incident (see app/incidents/actions.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@dataclass(slots=True)
class GuardContext:
    """What guards may read: stored facts about the incident plus the payload."""

    state: str
    severity: str
    lead_agency: str | None
    affected_agencies: list[str]
    latest_proposal_status: str | None
    settings: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Guard:
    name: str
    fn: Callable[[GuardContext], bool]
    payload: bool
    description: str


GUARDS: dict[str, Guard] = {}
ACTIONS: dict[str, Callable[[Any], Awaitable[None]]] = {}
# The state names the application can store (registered with the actions); a definition
# naming any other state is refused at load time. Empty: any name goes.
STATES: dict[str, None] = {}


def guard(name: str, *, payload: bool = False) -> Callable[[Callable[[GuardContext], bool]],
                                                          Callable[[GuardContext], bool]]:
    def register(fn: Callable[[GuardContext], bool]) -> Callable[[GuardContext], bool]:
        GUARDS[name] = Guard(name, fn, payload, (fn.__doc__ or name).strip())
        return fn

    return register


def action(name: str) -> Callable[[Callable[[Any], Awaitable[None]]],
                                  Callable[[Any], Awaitable[None]]]:
    def register(fn: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        ACTIONS[name] = fn
        return fn

    return register
