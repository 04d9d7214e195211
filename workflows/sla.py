"""`CRISISFLOW_SLA_OVERRIDES`: `clock.severity=duration,...` (`none` switches a clock off)."""

from __future__ import annotations

from app.core.config import parse_duration

SEVERITIES = ("low", "medium", "high", "critical")
KNOWN_CLOCKS = ("assess", "first_response", "proposal_decision")

Overrides = dict[tuple[str, str], float | None]


def parse_overrides(text: str, clocks: tuple[str, ...] = KNOWN_CLOCKS) -> Overrides:
    out: Overrides = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        clock, dot, severity = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(
                f"{item!r}: expected clock.severity=duration, e.g. assess.critical=30m")
        if clock not in clocks:
            raise ValueError(f"{item!r}: unknown clock {clock!r} (known: {', '.join(clocks)})")
        if severity not in SEVERITIES:
            raise ValueError(f"{item!r}: unknown severity {severity!r}")
        value = value.strip()
        try:
            out[(clock, severity)] = None if value == "none" else parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return out
