"""API keys: random bearer tokens stored as SHA-256 (they are high-entropy, so a fast hash is
safe), with a short visible prefix so operators can tell keys apart in `keys list`."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth.models import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, Role
from app.core.clock import utcnow
from app.core.errors import NotFound, ValidationProblem
from app.core.ids import new_id

KEY_PREFIX = "cf_"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: Role
    agency: str | None
    signing_secret: str | None

    @property
    def actor(self) -> str:
        return f"{self.role.value}:{self.name}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def validate_signing_secret(secret: str) -> bytes:
    """Standard Webhooks secrets are `whsec_` + base64; returns the raw key bytes."""
    if not secret.startswith("whsec_"):
        raise ValueError("a signing secret starts with whsec_")
    try:
        raw = base64.b64decode(secret[len("whsec_") :], validate=True)
    except ValueError as exc:
        raise ValueError("a signing secret is whsec_ followed by base64") from exc
    if len(raw) < 16:
        raise ValueError("a signing secret needs at least 16 bytes of key material")
    return raw


async def create_key(session: AsyncSession, key_in: ApiKeyCreate) -> ApiKeyCreated:
    if key_in.signing_secret is not None:
        try:
            validate_signing_secret(key_in.signing_secret)
        except ValueError as exc:
            raise ValidationProblem(
                str(exc), [{"loc": ["signing_secret"], "msg": str(exc)}]
            ) from None
    if key_in.agency is not None:
        from app.agencies.service import require_agencies

        await require_agencies(session, [key_in.agency], loc=["agency"])
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.model_validate(
        key_in,
        update={
            "id": new_id(),
            "prefix": key[:10],
            "hash": hash_key(key),
            "created_at": utcnow(),
        },
    )
    session.add(row)
    await session.flush()
    return ApiKeyCreated(id=row.id, name=row.name, role=row.role, key=key)


def to_public(row: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(row, update={"signed": row.signing_secret is not None})


async def list_keys(session: AsyncSession) -> list[ApiKeyPublic]:
    rows = await session.exec(select(ApiKey).order_by(col(ApiKey.created_at)))
    return [to_public(r) for r in rows]


async def revoke_key(session: AsyncSession, key_id: str) -> ApiKeyPublic:
    row = await session.get(ApiKey, key_id)
    if row is None:
        matches = (await session.exec(select(ApiKey).where(ApiKey.prefix == key_id))).all()
        if len(matches) != 1:
            raise NotFound(f"no API key with id {key_id}")
        row = matches[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
    return to_public(row)


async def authenticate(session: AsyncSession, key: str) -> Principal | None:
    row = (await session.exec(select(ApiKey).where(ApiKey.hash == hash_key(key)))).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, row.name, row.role, row.agency, row.signing_secret)
