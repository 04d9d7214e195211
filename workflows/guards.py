"""The guards of the default workflow (workflow.md, "Guards of the default workflow")."""

from __future__ import annotations

from workflows.registry import SEVERITY_RANK, GuardContext, guard


@guard("task_force_approved")
def task_force_approved(ctx: GuardContext) -> bool:
    """The latest task-force proposal of the incident is approved."""
    return ctx.latest_proposal_status == "approved"


@guard("proposal_pending")
def proposal_pending(ctx: GuardContext) -> bool:
    """The latest task-force proposal is still pending a decision."""
    return ctx.latest_proposal_status == "pending"


@guard("below_task_force_threshold")
def below_task_force_threshold(ctx: GuardContext) -> bool:
    """Severity is below the task-force threshold (high and critical need a task force)."""
    threshold = str(ctx.settings.get("task_force_threshold", "high"))
    return SEVERITY_RANK[ctx.severity] < SEVERITY_RANK[threshold]


@guard("multi_agency_has_lead")
def multi_agency_has_lead(ctx: GuardContext) -> bool:
    """With two or more agencies involved, a lead agency must be set before a response
    (Decree 244/2026, art. 7: the lead agency speaks after agreeing with the others)."""
    involved = set(ctx.affected_agencies) | ({ctx.lead_agency} if ctx.lead_agency else set())
    return len(involved) < 2 or ctx.lead_agency is not None


@guard("dismissal_only", payload=True)
def dismissal_only(ctx: GuardContext) -> bool:
    """Closing before a response needs resolution `dismissed` or `duplicate`."""
    return ctx.payload.get("resolution") in {"dismissed", "duplicate"}
