"""Workflow definitions: load and validate YAML, build one shared Machine per definition.

A definition names its states, the transitions (trigger, sources, destination, guards,
actions, emitted events, roles), the payload schema of each trigger and the deadlines. A
bad definition is refused at load time with the file and line of the mistake.

The shared `transitions.Machine` is fired on a light `_Adapter` (never the SQLModel row):
one Machine serves every incident, and the database transaction around the firing is the
real guard against races.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, create_model, model_validator
from transitions import Machine, MachineError

from app.core.config import parse_duration
from workflows import guards as _default_guards  # noqa: F401  (registers the guards)
from workflows.registry import ACTIONS, GUARDS, SEVERITY_RANK, STATES, GuardContext
from workflows.sla import SEVERITIES, Overrides

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"
DEFAULT_WORKFLOW = "communication-incident"
DEFAULT_ROLES = ("duty_officer",)
SAME = "="


class DefinitionError(ValueError):
    """A workflow definition is invalid; the message names the file and the line."""


# -- YAML with line numbers -------------------------------------------------------------

class _LineDict(dict[str, Any]):
    line: int = 0
    key_lines: dict[Any, int]


class _LineList(list[Any]):
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    key_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key_lines.get(key)
        except TypeError:  # an unhashable key: construct_mapping below says so
            continue
        if seen is not None:  # PyYAML would silently keep the last one
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen})", key_node.start_mark)
        key_lines[key] = key_node.start_mark.line + 1
    out = _LineDict(cast(dict[str, Any], loader.construct_mapping(node, deep=True)))
    out.line = node.start_mark.line + 1
    out.key_lines = key_lines
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    out = _LineList(loader.construct_sequence(node, deep=True))
    out.line = node.start_mark.line + 1
    out.item_lines = [item.start_mark.line + 1 for item in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def _line(node: Any, fallback: int = 1) -> int:
    return int(getattr(node, "line", 0) or fallback)


def _key_line(node: Any, key: Any, fallback: int = 1) -> int:
    """The line of `key` inside a mapping (or of the item `key` inside a list)."""
    if isinstance(node, _LineList):
        for item, line in zip(node, getattr(node, "item_lines", []), strict=False):
            if item == key:
                return int(line)
    lines = getattr(node, "key_lines", None) or {}
    try:
        return int(lines.get(key) or _line(node, fallback))
    except TypeError:
        return _line(node, fallback)


# -- payload schemas --------------------------------------------------------------------

Severity = Literal["low", "medium", "high", "critical"]
Category = Literal["fake_news", "negative_sentiment", "policy_misunderstanding", "crisis", "other"]
AGENCY_CODE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
FIELD_TYPES = {"text", "severity", "category", "int", "agency", "agency_list", "url", "choice",
               "incident_id", "bool"}


class PayloadBase(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _field(spec: dict[str, Any], where: str) -> tuple[Any, Any]:
    kind = spec.get("type")
    if kind not in FIELD_TYPES:
        raise DefinitionError(f"{where}: unknown payload type {kind!r}")
    required = bool(spec.get("required"))
    extra: dict[str, Any] = {}
    annotation: Any
    if kind == "text":
        annotation = str
        extra = {"min_length": 1 if required else 0,
                 "max_length": int(spec.get("max_length", 5000))}
    elif kind == "severity":
        annotation = Severity
    elif kind == "category":
        annotation = Category
    elif kind == "int":
        annotation = int
        if "min" in spec:
            extra["ge"] = spec["min"]
    elif kind == "bool":
        annotation = bool
    elif kind == "agency":
        annotation = str
        extra = {"pattern": AGENCY_CODE}
    elif kind == "agency_list":
        annotation = list[str]
        extra = {"min_length": int(spec.get("min_items", 0)), "max_length": 100}
    elif kind == "url":
        annotation = AnyHttpUrl
    elif kind == "incident_id":
        annotation = str
        extra = {"min_length": 1, "max_length": 64}
    else:  # choice
        values = spec.get("values")
        if not values:
            raise DefinitionError(f"{where}: a choice needs values")
        annotation = Literal[tuple(values)]  # type: ignore[valid-type]
    if required:
        return annotation, Field(..., **extra)
    default = spec.get("default")
    return annotation | None, Field(default, **extra)


def _payload_model(trigger: str, fields: dict[str, Any], source: str) -> type[PayloadBase]:
    spec: dict[str, Any] = {"trigger": (Literal[trigger], Field(...))}  # type: ignore[valid-type]
    required_if: list[tuple[str, str, Any]] = []
    for name, fspec in (fields or {}).items():
        where = f"{source}:{_key_line(fields, name)}: payload of {trigger!r}"
        if not isinstance(fspec, dict):
            raise DefinitionError(f"{where}: field {name!r} needs a mapping like {{type: text}}")
        spec[name] = _field(fspec, f"{where}: field {name!r}")
        for other, value in (fspec.get("required_if") or {}).items():
            required_if.append((name, other, value))

    def check_required_if(self: Any) -> Any:
        for name, other, value in required_if:
            if getattr(self, other, None) == value and getattr(self, name, None) in (None, ""):
                raise ValueError(f"{name} is required when {other} is {value}")
        return self

    validators: dict[str, Any] = {
        "_required_if": model_validator(mode="after")(check_required_if)}
    title = "".join(p.capitalize() for p in trigger.split("_")) + "Payload"
    model: type[PayloadBase] = create_model(  # type: ignore[call-overload]
        title, __base__=PayloadBase, __validators__=validators, **spec
    )
    return model


# -- definitions ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TransitionSpec:
    trigger: str
    sources: tuple[str, ...]
    dest: str  # SAME for "stay in the current state"
    guards: tuple[str, ...]
    actions: tuple[str, ...]
    emits: tuple[str, ...]
    roles: tuple[str, ...]
    internal: bool

    def destination(self, source: str) -> str:
        return source if self.dest == SAME else self.dest


@dataclass(frozen=True, slots=True)
class DeadlineSpec:
    clock: str
    starts_in: str
    met_by: tuple[str, ...]
    durations: dict[str, float | None]


class _Adapter:
    """What the shared Machine moves: a state and the guard context, nothing else."""

    __slots__ = ("ctx", "state")

    def __init__(self, state: str, ctx: GuardContext) -> None:
        self.state = state
        self.ctx = ctx


@dataclass
class Workflow:
    name: str
    version: int
    description: str
    initial: str
    states: dict[str, str]
    final: tuple[str, ...]
    transitions: list[TransitionSpec]
    payloads: dict[str, type[PayloadBase]]
    deadlines: dict[str, DeadlineSpec]
    settings: dict[str, Any]
    source: str
    machine: Machine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.machine = Machine(
            model=None,
            states=list(self.states),
            initial=self.initial,
            auto_transitions=False,
            send_event=True,
            model_attribute="state",
        )
        for t in self.transitions:
            self.machine.add_transition(
                t.trigger,
                list(t.sources),
                t.dest,
                conditions=[_condition(GUARDS[g].fn) for g in t.guards],
            )

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def triggers(self, *, public_only: bool = False) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.transitions:
            if not (public_only and t.internal):
                seen.setdefault(t.trigger, None)
        return list(seen)

    def candidates(self, trigger: str, state: str) -> list[TransitionSpec]:
        return [t for t in self.transitions if t.trigger == trigger and state in t.sources]

    def first_failed_guard(self, spec: TransitionSpec, ctx: GuardContext,
                           *, stored_only: bool = False) -> str | None:
        for name in spec.guards:
            g = GUARDS[name]
            if stored_only and g.payload:
                continue
            if not g.fn(ctx):
                return name
        return None

    def allowed_triggers(self, ctx: GuardContext, role: str | None) -> list[str]:
        """Public triggers the role may fire now, leaving out those whose stored-data guards
        already fail (payload guards are judged when fired)."""
        out: list[str] = []
        for t in self.transitions:
            if t.internal or ctx.state not in t.sources or t.trigger in out:
                continue
            if role is not None and role != "admin" and role not in t.roles:
                continue
            if self.first_failed_guard(t, ctx, stored_only=True) is None:
                out.append(t.trigger)
        return out

    def fire(self, trigger: str, ctx: GuardContext) -> tuple[TransitionSpec, str]:
        """Move `ctx.state` by `trigger`. Raises InvalidTrigger or GuardRefused."""
        candidates = self.candidates(trigger, ctx.state)
        if not candidates:
            raise InvalidTrigger(trigger, ctx.state)
        chosen = next((t for t in candidates if self.first_failed_guard(t, ctx) is None), None)
        if chosen is None:
            failed = self.first_failed_guard(candidates[0], ctx)
            description = GUARDS[failed].description if failed in GUARDS else ""
            raise GuardRefused(trigger, ctx.state, failed or "unknown", description)
        adapter = _Adapter(ctx.state, ctx)
        try:
            moved = self.machine.events[trigger].trigger(adapter)
        except MachineError as exc:  # the definition and the Machine disagree: a bug
            raise InvalidTrigger(trigger, ctx.state) from exc
        if not moved:
            raise GuardRefused(trigger, ctx.state, "unknown", "a guard refused the transition")
        return chosen, adapter.state

    def deadline_seconds(self, clock: str, severity: str, overrides: Overrides) -> float | None:
        if (clock, severity) in overrides:
            return overrides[(clock, severity)]
        return self.deadlines[clock].durations.get(severity)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "initial": self.initial,
            "final": list(self.final),
            "states": [{"name": s, "description": d} for s, d in self.states.items()],
            "transitions": [
                {
                    "trigger": t.trigger,
                    "sources": list(t.sources),
                    "dest": t.dest,
                    "guards": list(t.guards),
                    "actions": list(t.actions),
                    "emits": list(t.emits),
                    "roles": list(t.roles),
                    "internal": t.internal,
                }
                for t in self.transitions
            ],
            "guards": {
                g: GUARDS[g].description for t in self.transitions for g in t.guards
            },
            "payloads": {k: v.model_json_schema() for k, v in self.payloads.items()},
            "deadlines": {
                d.clock: {
                    "starts_in": d.starts_in,
                    "met_by": list(d.met_by),
                    "durations": {s: d.durations.get(s) for s in SEVERITIES},
                }
                for d in self.deadlines.values()
            },
            "settings": self.settings,
        }

    def mermaid(self) -> str:
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for t in self.transitions:
            label = t.trigger + (f" [{', '.join(t.guards)}]" if t.guards else "")
            for src in t.sources:
                lines.append(f"    {src} --> {t.destination(src)}: {label}")
        for s in self.final:
            lines.append(f"    {s} --> [*]")
        return "\n".join(lines) + "\n"


def _condition(fn: Any) -> Any:
    return lambda event: fn(event.model.ctx)


class InvalidTrigger(Exception):
    def __init__(self, trigger: str, state: str) -> None:
        super().__init__(f"{trigger} is not allowed from {state}")
        self.trigger, self.state = trigger, state


class GuardRefused(Exception):
    def __init__(self, trigger: str, state: str, rule: str, description: str) -> None:
        super().__init__(f"{trigger} refused by {rule}: {description}")
        self.trigger, self.state, self.rule, self.description = trigger, state, rule, description


# -- loading and validation -------------------------------------------------------------

def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def parse_definition(text: str, source: str = "<string>") -> Workflow:
    try:
        doc = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise DefinitionError(f"{source}{line}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise DefinitionError(f"{source}:1: a workflow definition is a mapping")

    def err(node: Any, message: str, key: Any = None) -> DefinitionError:
        """An error at `node` (at its `key` when given: the offending line itself)."""
        line = _line(node, _line(doc)) if key is None else _key_line(node, key, _line(doc))
        return DefinitionError(f"{source}:{line}: {message}")

    def mapping(node: Any, what: str, parent: Any, key: Any) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise err(parent, f"{what} must be a mapping", key)
        return node

    for key in ("name", "version", "initial", "states", "transitions"):
        if key not in doc:
            raise err(doc, f"missing {key!r}")
    states_node = doc["states"]
    if isinstance(states_node, list):
        states = {str(s): "" for s in states_node}
    elif isinstance(states_node, dict):
        states = {
            str(k): str(mapping(v, f"state {k!r}", states_node, k).get("description", ""))
            for k, v in states_node.items()
        }
    else:
        raise err(doc, "states must be a list or a mapping", "states")
    for s in states:
        if STATES and s not in STATES:
            raise err(states_node, f"state {s!r} cannot be stored: an incident's state is one "
                                   f"of {', '.join(STATES)}", s)
    if doc["initial"] not in states:
        raise err(doc, f"initial state {doc['initial']!r} is not a state", "initial")
    final = tuple(str(s) for s in _as_list(doc.get("final")))
    for s in final:
        if s not in states:
            raise err(doc, f"final state {s!r} is not a state", "final")

    payload_nodes = mapping(doc.get("payloads"), "payloads", doc, "payloads")
    transitions: list[TransitionSpec] = []
    for node in _as_list(doc["transitions"]):
        if not isinstance(node, dict) or "trigger" not in node or "dest" not in node:
            raise err(node, "a transition needs trigger, source and dest")
        sources = tuple(str(s) for s in _as_list(node.get("source")))
        if not sources:
            raise err(node, f"transition {node['trigger']!r} has no source")
        for s in sources:
            if s not in states:
                raise err(node, f"transition {node['trigger']!r}: unknown state {s!r}", "source")
        if node["dest"] != SAME and node["dest"] not in states:
            raise err(node, f"transition {node['trigger']!r}: unknown state {node['dest']!r}",
                      "dest")
        for g in _as_list(node.get("guards")):
            if g not in GUARDS:
                raise err(node, f"transition {node['trigger']!r}: unknown guard {g!r} "
                                f"(known: {', '.join(sorted(GUARDS))})", "guards")
        for a in _as_list(node.get("actions")):
            if ACTIONS and a not in ACTIONS:
                raise err(node, f"transition {node['trigger']!r}: unknown action {a!r}",
                          "actions")
        transitions.append(
            TransitionSpec(
                trigger=str(node["trigger"]),
                sources=sources,
                dest=str(node["dest"]),
                guards=tuple(_as_list(node.get("guards"))),
                actions=tuple(_as_list(node.get("actions"))),
                emits=tuple(_as_list(node.get("emits"))),
                roles=tuple(_as_list(node.get("roles")) or DEFAULT_ROLES),
                internal=bool(node.get("internal", False)),
            )
        )

    payloads: dict[str, type[PayloadBase]] = {}
    for trigger in {t.trigger for t in transitions}:
        fields = mapping(payload_nodes.get(trigger), f"payload of {trigger!r}", payload_nodes,
                         trigger)
        payloads[trigger] = _payload_model(trigger, fields, source)
    for trigger in payload_nodes:
        if trigger not in payloads:
            raise err(payload_nodes, f"payload for unknown trigger {trigger!r}", trigger)

    # Reachability and dead ends: every state reachable from the initial one, and every
    # state other than a final one has a way out.
    reachable, frontier = {doc["initial"]}, [doc["initial"]]
    while frontier:
        here = frontier.pop()
        for t in transitions:
            if here in t.sources:
                there = t.destination(here)
                if there not in reachable:
                    reachable.add(there)
                    frontier.append(there)
    for s in states:
        if s not in reachable:
            raise err(states_node, f"state {s!r} is unreachable from {doc['initial']!r}", s)
        leaves = any(s in t.sources and t.destination(s) != s for t in transitions)
        if not leaves and s not in final:
            raise err(states_node, f"state {s!r} is a dead end (no transition leaves it)", s)

    deadlines: dict[str, DeadlineSpec] = {}
    triggers = {t.trigger for t in transitions}
    deadline_nodes = mapping(doc.get("deadlines"), "deadlines", doc, "deadlines")
    for clock, node in deadline_nodes.items():
        node = mapping(node, f"deadline {clock!r}", deadline_nodes, clock)
        if node.get("starts_in") not in states:
            raise err(node, f"deadline {clock!r}: starts_in must name a state",
                      "starts_in" if "starts_in" in node else None)
        met_by = tuple(str(m) for m in _as_list(node.get("met_by")))
        for m in met_by:
            if m not in triggers:
                raise err(node, f"deadline {clock!r}: met_by names unknown trigger {m!r}",
                          "met_by")
        durations: dict[str, float | None] = {}
        duration_nodes = mapping(node.get("durations"), f"deadline {clock!r}: durations", node,
                                 "durations")
        for sev, value in duration_nodes.items():
            if sev not in SEVERITIES:
                raise err(duration_nodes, f"deadline {clock!r}: unknown severity {sev!r}", sev)
            try:
                durations[sev] = None if value in (None, "none") else parse_duration(str(value))
            except ValueError as exc:
                raise err(duration_nodes, f"deadline {clock!r}.{sev}: {exc}", sev) from None
        deadlines[str(clock)] = DeadlineSpec(str(clock), node["starts_in"], met_by, durations)

    settings = dict(mapping(doc.get("settings"), "settings", doc, "settings"))
    threshold = settings.get("task_force_threshold", "high")
    if threshold not in SEVERITY_RANK:
        raise err(doc.get("settings"), f"task_force_threshold {threshold!r} is not a severity",
                  "task_force_threshold")
    try:
        version = int(doc["version"])
    except (TypeError, ValueError):
        raise err(doc, "version must be an integer", "version") from None
    return Workflow(
        name=str(doc["name"]),
        version=version,
        description=str(doc.get("description", "")),
        initial=str(doc["initial"]),
        states=states,
        final=final,
        transitions=transitions,
        payloads=payloads,
        deadlines=deadlines,
        settings=settings,
        source=source,
    )


def load_file(path: Path) -> Workflow:
    return parse_definition(path.read_text("utf-8"), str(path))


def definition_files(paths: Iterable[Path] | None = None) -> list[Path]:
    found: list[Path] = []
    for p in paths or [DEFINITIONS_DIR]:
        found.extend(sorted(p.glob("*.y*ml")) if p.is_dir() else [p])
    return found


class WorkflowRegistry:
    """Every loaded definition, by name and by (name, version)."""

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        self._by_key: dict[tuple[str, int], Workflow] = {}
        self._latest: dict[str, Workflow] = {}
        for wf in workflows:
            if wf.key in self._by_key:
                raise DefinitionError(f"{wf.source}: {wf.name} v{wf.version} is defined twice")
            self._by_key[wf.key] = wf
            if wf.name not in self._latest or self._latest[wf.name].version < wf.version:
                self._latest[wf.name] = wf

    @classmethod
    def load(cls, paths: Iterable[Path] | None = None) -> WorkflowRegistry:
        import app.incidents.actions  # noqa: F401  (registers the actions definitions name)

        return cls(load_file(p) for p in definition_files(paths))

    def latest(self, name: str = DEFAULT_WORKFLOW) -> Workflow:
        return self._latest[name]

    def get(self, name: str, version: int) -> Workflow:
        return self._by_key.get((name, version)) or self._latest[name]

    def find(self, name: str, version: int) -> Workflow | None:
        """Like `get`, but None when no version of `name` is loaded at all."""
        return self.get(name, version) if name in self._latest else None

    def names(self) -> list[str]:
        return sorted(self._latest)

    def has(self, name: str) -> bool:
        return name in self._latest
