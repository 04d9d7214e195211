from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from app.api.deps import Admin, Reader, ReadSessionDep, SessionDep, require
from app.auth.models import Role
from app.auth.service import Principal
from app.core.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page
from app.incidents.service import get_visible
from app.notifications import service
from app.notifications.models import DeliveryPublic, SubscriptionCreate, SubscriptionPublic
from notifiers.base import NotifierRegistry

router = APIRouter()
LimitQ = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Operator = Annotated[Principal, Depends(require(Role.duty_officer))]
StatusQ = Literal["pending", "delivered", "failed", "dead"]


def registry(request: Request) -> NotifierRegistry:
    reg: NotifierRegistry = request.app.state.notifiers
    return reg


@router.get("/subscriptions", response_model=Page[SubscriptionPublic], tags=["subscriptions"])
async def list_subscriptions(_: Admin, session: ReadSessionDep, limit: LimitQ = DEFAULT_LIMIT,
                             cursor: str | None = None) -> Page[SubscriptionPublic]:
    """Active subscriptions (secrets are never returned)."""
    return await service.list_subscriptions(session, limit, cursor)


@router.post("/subscriptions", response_model=SubscriptionPublic, status_code=201,
             tags=["subscriptions"])
async def create_subscription(item_in: SubscriptionCreate, request: Request, response: Response,
                              _: Admin, session: SessionDep) -> SubscriptionPublic:
    """Subscribe an agency's endpoint to events; the notifier validates the target."""
    created = await service.create_subscription(session, registry(request), item_in)
    response.headers["Location"] = f"/api/v1/subscriptions/{created.id}"
    return created


@router.delete("/subscriptions/{subscription_id}", status_code=204, tags=["subscriptions"])
async def delete_subscription(subscription_id: str, _: Admin, session: SessionDep) -> Response:
    """Stop a subscription; its undelivered notifications are not sent."""
    await service.delete_subscription(session, subscription_id)
    return Response(status_code=204)


@router.get("/notifications", response_model=Page[DeliveryPublic], tags=["notifications"])
async def list_notifications(_: Operator, session: ReadSessionDep, status: StatusQ | None = None,
                             incident: str | None = None, limit: LimitQ = DEFAULT_LIMIT,
                             cursor: str | None = None) -> Page[DeliveryPublic]:
    """Deliveries, newest first, each with its attempts."""
    return await service.list_deliveries(session, status=status, incident_id=incident,
                                         limit=limit, cursor=cursor)


@router.post("/notifications/{delivery_id}/retry", status_code=202, tags=["notifications"])
async def retry_notification(delivery_id: str, request: Request, _: Admin,
                             session: SessionDep) -> dict[str, str]:
    """Re-queue a failed or dead delivery."""
    await service.retry_delivery(session, delivery_id)
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        from app.core.db import after_commit

        after_commit(session, worker.wake)
    return {"id": delivery_id, "status": "pending"}


@router.get("/incidents/{incident_id}/notifications", response_model=Page[DeliveryPublic],
            tags=["incidents"])
async def incident_notifications(incident_id: str, principal: Reader, session: ReadSessionDep,
                                 limit: LimitQ = MAX_LIMIT,
                                 cursor: str | None = None) -> Page[DeliveryPublic]:
    """Deliveries caused by one incident, with their status."""
    await get_visible(session, incident_id, principal)
    return await service.list_deliveries(session, status=None, incident_id=incident_id,
                                         limit=limit, cursor=cursor)
