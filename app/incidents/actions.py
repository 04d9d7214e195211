"""The named actions the workflow definitions refer to. Each runs inside the transition's
transaction, after the shared Machine has accepted the trigger."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.agencies.service import require_agencies
from app.auth.service import Principal
from app.core.errors import Conflict, Forbidden, ValidationProblem
from app.core.ids import new_id
from app.incidents.models import (
    Category,
    Incident,
    Proposal,
    ProposalStatus,
    Response,
    Severity,
    State,
)
from workflows.engine import Workflow
from workflows.registry import SEVERITY_RANK, STATES, action

SEVERITY_LEVEL = {"high": 1, "critical": 2}
STATES.update(dict.fromkeys(s.value for s in State))  # what the incident table can store


@dataclass
class ActionContext:
    session: AsyncSession
    incident: Incident
    payload: dict[str, Any]
    principal: Principal
    workflow: Workflow
    now: datetime
    latest_proposal: Proposal | None
    agencies_changed: bool = False
    # Extra events (escalations) and data added to the transition's own events.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    event_data: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, Any] = field(default_factory=dict)


@action("apply_assessment")
async def apply_assessment(ctx: ActionContext) -> None:
    inc, p = ctx.incident, ctx.payload
    lead, affected = p.get("lead_agency"), p.get("affected_agencies")
    await require_agencies(ctx.session, [lead, *(affected or [])], loc=["body", "agencies"])
    ctx.timeline["previous_severity"] = inc.severity.value
    inc.severity = Severity(p["severity"])
    if p.get("category"):
        inc.category = Category(p["category"])
    if lead:
        inc.lead_agency = lead
        ctx.agencies_changed = True
    if affected is not None:
        inc.affected_agencies = list(dict.fromkeys(affected))
        ctx.agencies_changed = True
    inc.assessed_at = inc.assessed_at or ctx.now
    inc.assessment = {
        "summary": p["summary"],
        "reach": p.get("reach"),
        "at": ctx.now.isoformat(),
        "by": ctx.principal.actor,
    }


@action("escalate_for_severity")
async def escalate_for_severity(ctx: ActionContext) -> None:
    raise_level(ctx, SEVERITY_LEVEL.get(ctx.incident.severity.value, 0), {"reason": "severity"})


def raise_level(ctx: ActionContext, level: int, extra: dict[str, Any]) -> None:
    """Levels only go up (workflow.md): a lower target changes nothing."""
    if level > ctx.incident.escalation_level:
        previous = ctx.incident.escalation_level
        ctx.incident.escalation_level = level
        ctx.events.append(("incident.escalated",
                           {**extra, "level": level, "previous_level": previous}))
        ctx.timeline["escalated_to"] = level


@action("create_proposal")
async def create_proposal(ctx: ActionContext) -> None:
    p = ctx.payload
    members = list(dict.fromkeys(p["members"]))
    await require_agencies(ctx.session, [p["lead_agency"]], loc=["body", "lead_agency"])
    await require_agencies(ctx.session, members, loc=["body", "members"])
    proposal = Proposal(
        id=new_id(),
        incident_id=ctx.incident.id,
        status=ProposalStatus.pending,
        lead_agency=p["lead_agency"],
        members=members,
        mandate=p["mandate"],
        rationale=p["rationale"],
        proposed_by=ctx.principal.actor,
        proposed_by_key=ctx.principal.key_id,
        proposed_at=ctx.now,
    )
    ctx.session.add(proposal)
    if ctx.incident.lead_agency is None:
        ctx.incident.lead_agency = p["lead_agency"]
        ctx.agencies_changed = True
    ctx.latest_proposal = proposal
    ctx.timeline["proposal_id"] = proposal.id


def _pending(ctx: ActionContext) -> Proposal:
    proposal = ctx.latest_proposal
    if proposal is None or proposal.status != ProposalStatus.pending:
        raise Conflict("the incident has no pending task-force proposal")
    return proposal


@action("withdraw_proposal")
async def withdraw_proposal(ctx: ActionContext) -> None:
    proposal = _pending(ctx)
    proposal.status = ProposalStatus.withdrawn
    proposal.decided_at = ctx.now
    proposal.decided_by = ctx.principal.actor
    proposal.decision_comment = ctx.payload.get("reason")
    ctx.session.add(proposal)
    ctx.timeline["proposal_id"] = proposal.id


async def _decide(ctx: ActionContext, status: ProposalStatus) -> None:
    proposal = _pending(ctx)
    if proposal.proposed_by_key == ctx.principal.key_id:
        raise Forbidden("The key that proposed a task force cannot decide on it.")
    proposal.status = status
    proposal.decided_by = ctx.principal.actor
    proposal.decided_at = ctx.now
    proposal.decision_comment = ctx.payload.get("comment")
    ctx.session.add(proposal)
    ctx.timeline["proposal_id"] = proposal.id


@action("approve_proposal")
async def approve_proposal(ctx: ActionContext) -> None:
    await _decide(ctx, ProposalStatus.approved)


@action("reject_proposal")
async def reject_proposal(ctx: ActionContext) -> None:
    await _decide(ctx, ProposalStatus.rejected)


@action("record_response")
async def record_response(ctx: ActionContext) -> None:
    p = ctx.payload
    approved = ctx.latest_proposal
    response = Response(
        id=new_id(),
        incident_id=ctx.incident.id,
        channel=p["channel"],
        statement=p["statement"],
        spokesperson=p["spokesperson"],
        url=str(p["url"]) if p.get("url") else None,
        language=p.get("language") or "vi",
        severity_at_issue=ctx.incident.severity.value,
        approved_proposal_id=approved.id if approved and approved.status == "approved" else None,
        issued_at=ctx.now,
        issued_by=ctx.principal.actor,
    )
    ctx.session.add(response)
    if ctx.incident.first_response_at is None:
        ctx.incident.first_response_at = ctx.now
    ctx.timeline["response_id"] = response.id
    ctx.event_data["response"] = {
        "id": response.id, "channel": response.channel, "statement": response.statement,
        "spokesperson": response.spokesperson, "url": response.url,
        "language": response.language, "issued_at": ctx.now.isoformat(),
    }


@action("record_closure")
async def record_closure(ctx: ActionContext) -> None:
    p = ctx.payload
    duplicate_of = p.get("duplicate_of")
    if duplicate_of:
        if duplicate_of == ctx.incident.id:
            raise ValidationProblem("an incident cannot be a duplicate of itself",
                                    [{"loc": ["body", "duplicate_of"], "msg": "self reference"}])
        if await ctx.session.get(Incident, duplicate_of) is None:
            msg = f"no incident with id {duplicate_of}"
            raise ValidationProblem(msg, [{"loc": ["body", "duplicate_of"], "msg": msg}])
    proposal = ctx.latest_proposal
    if proposal is not None and proposal.status == ProposalStatus.pending:
        proposal.status = ProposalStatus.withdrawn
        proposal.decided_at = ctx.now
        proposal.decided_by = ctx.principal.actor
        proposal.decision_comment = "withdrawn: incident closed"
        ctx.session.add(proposal)
    ctx.incident.closure = {
        "resolution": p["resolution"],
        "summary": p["summary"],
        "lessons_learned": p.get("lessons_learned"),
        "duplicate_of": duplicate_of,
        "closed_at": ctx.now.isoformat(),
        "closed_by": ctx.principal.actor,
    }


@action("record_reopening")
async def record_reopening(ctx: ActionContext) -> None:
    ctx.timeline["previous_closure"] = ctx.incident.closure
    ctx.incident.closure = None


async def latest_proposal(session: AsyncSession, incident_id: str) -> Proposal | None:
    stmt = (
        select(Proposal)
        .where(Proposal.incident_id == incident_id)
        .order_by(col(Proposal.proposed_at).desc(), col(Proposal.id).desc())
        .limit(1)
    )
    return (await session.exec(stmt)).first()


def severity_at_least(severity: str, threshold: str) -> bool:
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[threshold]
