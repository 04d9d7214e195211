"""Every table model, imported in one place for Alembic and the schema tests."""

from app.agencies.models import Agency
from app.auth.models import ApiKey

__all__ = ["Agency", "ApiKey"]
