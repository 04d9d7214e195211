from datetime import datetime
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from pydantic import Field

from app.api.deps import (
    DatabaseDep,
    DutyOfficer,
    Leader,
    Reader,
    ReadSessionDep,
    SessionDep,
    require,
)
from app.auth.models import Role
from app.auth.service import Principal
from app.core.jsonutil import dumps_utc
from app.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from app.incidents import service
from app.incidents.models import (
    Category,
    CommentCreate,
    DecisionIn,
    IncidentCreate,
    IncidentPublic,
    IncidentUpdate,
    ProposalPublic,
    ProposalStatus,
    RejectionIn,
    Severity,
    State,
    TimelineEntryPublic,
)
from workflows.engine import WorkflowRegistry

LimitQ = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
IfMatch = Annotated[str | None, Header(description='The ETag you last saw, e.g. "3"')]
Commenter = Annotated[Principal, Depends(require(Role.duty_officer, Role.leader))]
ProposalReader = Annotated[Principal, Depends(require(Role.leader, Role.duty_officer))]

_CONFLICTS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such incident (or not visible to this key)"},
    409: {"description": "Invalid transition, failed guard, or a racing writer"},
    412: {"description": "If-Match does not match the current version"},
    422: {"description": "Invalid payload"},
}


async def env(request: Request) -> service.Env:
    e: service.Env = request.app.state.env
    return e


EnvDep = Annotated[service.Env, Depends(env)]


async def _observe(incident_id: str, db: DatabaseDep) -> int | None:
    # Read before the write transaction queues for the lock (declare it before SessionDep).
    async with db.read() as session:
        return await service.observed_version(session, incident_id)


Observed = Annotated[int | None, Depends(_observe)]


def _etag(response: Response, inc: IncidentPublic) -> IncidentPublic:
    response.headers["ETag"] = f'"{inc.version}"'
    return inc


def transition_body(workflows: WorkflowRegistry) -> Any:
    """The request body of /transitions: one payload model per public trigger, chosen by
    `trigger` (the union across every loaded workflow; each incident's own workflow then
    validates it again)."""
    models: dict[str, Any] = {}
    for name in workflows.names():
        wf = workflows.latest(name)
        for trigger in wf.triggers(public_only=True):
            models.setdefault(trigger, wf.payloads[trigger])
    union = Union[tuple(models.values())]  # type: ignore[valid-type]  # noqa: UP007
    return Annotated[union, Field(discriminator="trigger")]


def build_router(workflows: WorkflowRegistry) -> APIRouter:
    router = APIRouter(tags=["incidents"])
    TransitionIn = transition_body(workflows)

    @router.post("/incidents", response_model=IncidentPublic, status_code=201)
    async def create_incident(item_in: IncidentCreate, response: Response, principal: DutyOfficer,
                              session: SessionDep, e: EnvDep) -> IncidentPublic:
        """Open an incident in `detected`."""
        inc = await service.create(session, e, item_in, principal.actor)
        response.headers["Location"] = f"/api/v1/incidents/{inc.id}"
        return _etag(response, await service.to_public(session, e, inc, principal))

    @router.get("/incidents", response_model=Page[IncidentPublic])
    async def list_incidents(
        principal: Reader,
        session: ReadSessionDep,
        e: EnvDep,
        state: Annotated[list[State] | None, Query()] = None,
        severity: Annotated[list[Severity] | None, Query()] = None,
        category: Category | None = None,
        agency: str | None = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        overdue: bool | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        sort: Literal["-created_at", "created_at"] = "-created_at",
        limit: LimitQ = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> Response:
        """Incidents, newest first; `q` searches title and description ignoring accents."""
        filters = service.IncidentFilters(
            state=[s.value for s in state] if state else None,
            severity=[s.value for s in severity] if severity else None,
            category=category.value if category else None,
            agency=agency, q=q, overdue=overdue, created_after=created_after,
            created_before=created_before, ascending=sort == "created_at",
        )
        page = await service.list_incidents(session, e, principal, filters, limit, cursor)
        return Response(dumps_utc(page), media_type="application/json")

    @router.get("/incidents/{incident_id}", response_model=IncidentPublic,
                responses={404: _CONFLICTS[404]})
    async def get_incident(incident_id: str, response: Response, principal: Reader,
                           session: ReadSessionDep, e: EnvDep) -> IncidentPublic:
        """One incident, with the triggers this key may fire now."""
        inc = await service.get_visible(session, incident_id, principal)
        return _etag(response, await service.to_public(session, e, inc, principal))

    @router.patch("/incidents/{incident_id}", response_model=IncidentPublic, responses=_CONFLICTS)
    async def patch_incident(incident_id: str, item_in: IncidentUpdate, response: Response,
                             principal: DutyOfficer, observed: Observed, session: SessionDep,
                             e: EnvDep, if_match: IfMatch = None) -> IncidentPublic:
        """Edit descriptive fields (never the state)."""
        inc = await service.update(session, e, incident_id, item_in, principal, if_match,
                                   observed)
        return _etag(response, await service.to_public(session, e, inc, principal))

    @router.post("/incidents/{incident_id}/transitions", response_model=IncidentPublic,
                 responses=_CONFLICTS)
    async def transition(incident_id: str, body: Annotated[TransitionIn, Body()],  # type: ignore[valid-type]
                         response: Response, principal: DutyOfficer, observed: Observed,
                         session: SessionDep, e: EnvDep,
                         if_match: IfMatch = None) -> IncidentPublic:
        """Fire a trigger: `{"trigger": "assess", ...payload}`."""
        data = body.model_dump(mode="json", exclude_unset=True)  # type: ignore[attr-defined]
        trigger = data.pop("trigger")
        inc, _ = await service.fire(session, e, incident_id, trigger, data, principal, if_match,
                                    observed=observed)
        return _etag(response, await service.to_public(session, e, inc, principal))

    @router.get("/incidents/{incident_id}/timeline", response_model=Page[TimelineEntryPublic],
                responses={404: _CONFLICTS[404]})
    async def get_timeline(incident_id: str, principal: Reader,
                           session: ReadSessionDep) -> Page[TimelineEntryPublic]:
        """Every event of the incident, oldest first (hash-chained)."""
        return Page(items=await service.list_timeline(session, incident_id, principal))

    @router.post("/incidents/{incident_id}/comments", response_model=TimelineEntryPublic,
                 status_code=201, responses={404: _CONFLICTS[404]})
    async def add_comment(incident_id: str, item_in: CommentCreate, principal: Commenter,
                          session: SessionDep) -> TimelineEntryPublic:
        """Add a comment to the timeline."""
        return await service.add_comment(session, incident_id, item_in.body, principal)

    @router.get("/proposals", response_model=Page[ProposalPublic], tags=["proposals"])
    async def list_proposals(
        _: ProposalReader, session: ReadSessionDep, status: ProposalStatus | None = None,
        incident: str | None = None, limit: LimitQ = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[ProposalPublic]:
        """Task-force proposals, newest first; `?status=pending` is the leadership inbox."""
        return await service.list_proposals(session, status.value if status else None, incident,
                                            limit, cursor)

    @router.get("/proposals/{proposal_id}", response_model=ProposalPublic, tags=["proposals"])
    async def get_proposal(proposal_id: str, _: ProposalReader,
                           session: ReadSessionDep) -> ProposalPublic:
        """One proposal with its incident reference."""
        return await service.get_proposal(session, proposal_id)

    @router.post("/proposals/{proposal_id}/approve", response_model=ProposalPublic,
                 tags=["proposals"], responses=_CONFLICTS)
    async def approve(proposal_id: str, principal: Leader, session: SessionDep, e: EnvDep,
                      item_in: DecisionIn | None = None) -> ProposalPublic:
        """Approve a pending proposal (not by the key that proposed it)."""
        comment = item_in.comment if item_in else None
        return await service.decide(session, e, proposal_id, True, comment, principal)

    @router.post("/proposals/{proposal_id}/reject", response_model=ProposalPublic,
                 tags=["proposals"], responses=_CONFLICTS)
    async def reject(proposal_id: str, item_in: RejectionIn, principal: Leader,
                     session: SessionDep, e: EnvDep) -> ProposalPublic:
        """Reject a pending proposal; the incident returns to `assessed`."""
        return await service.decide(session, e, proposal_id, False, item_in.comment, principal)

    return router
