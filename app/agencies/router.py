from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.agencies import service
from app.agencies.models import CODE_PATTERN, AgencyCreate, AgencyPublic, AgencyUpdate
from app.api.deps import Admin, Reader, ReadSessionDep, SessionDep
from app.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page

router = APIRouter(prefix="/agencies", tags=["agencies"])
LimitQ = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.get("", response_model=Page[AgencyPublic])
async def list_agencies(
    session: ReadSessionDep, _: Reader, limit: LimitQ = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[AgencyPublic]:
    """The agency directory, ordered by code."""
    return await service.list_agencies(session, limit, cursor)


@router.get("/{code}", response_model=AgencyPublic)
async def get_agency(code: str, session: ReadSessionDep, _: Reader) -> AgencyPublic:
    """One agency."""
    return await service.get_agency(session, code)


@router.post("", response_model=AgencyPublic, status_code=201)
async def create_agency(
    item_in: AgencyCreate, response: Response, _: Admin, session: SessionDep
) -> AgencyPublic:
    """Add an agency to the directory."""
    agency = await service.create_agency(session, item_in)
    response.headers["Location"] = f"/api/v1/agencies/{agency.code}"
    return agency


@router.put("/{code}", response_model=AgencyPublic, responses={201: {"model": AgencyPublic}})
async def put_agency(
    code: Annotated[str, Path(pattern=CODE_PATTERN)],
    item_in: AgencyUpdate,
    response: Response,
    _: Admin,
    session: SessionDep,
) -> AgencyPublic:
    """Replace an agency (or create it: 201)."""
    agency, created = await service.put_agency(session, code, item_in)
    if created:
        response.status_code = 201
    return agency
