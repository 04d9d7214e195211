"""Matching events to subscriptions (filled in with the subscriptions table)."""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.notifications.models import Event


async def fan_out(session: AsyncSession, event: Event, incident: dict[str, Any]) -> int:
    return 0
