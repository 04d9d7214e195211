"""Factories uvicorn imports in each serving process."""

from fastapi import FastAPI

from app.core.config import get_settings
from app.core.logging import configure_logging
from app.main import create_app


def app_with_worker() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings, run_worker=True)


def app_without_worker() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings, run_worker=False)
