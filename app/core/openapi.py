"""The served OpenAPI document: every error documented as RFC 9457 problem+json, and the
bearer API key as the security scheme."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.core.errors import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "examples": ["/problems/validation"]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "array", "items": {}}, "msg": {"type": "string"}},
            },
        },
        "current_state": {"type": "string"},
        "allowed_triggers": {"type": "array", "items": {"type": "string"}},
        "rule": {"type": "string"},
    },
    "additionalProperties": True,
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        components["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer",
                       "description": "An API key made with `crisisflow keys create`"}
        }
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                responses = op.setdefault("responses", {})
                for status, response in list(responses.items()):
                    if status.isdigit() and int(status) >= 400:
                        responses[status] = _problem_response(
                            response.get("description") or "Error")
                responses["default"] = _problem_response("Error (RFC 9457 problem details)")
                if path not in PUBLIC_PATHS:
                    op["security"] = [{"apiKey": []}]
                    responses.setdefault("401", _problem_response("Missing or unknown API key"))
                    responses.setdefault("403", _problem_response("The key's role may not"))
                if method in ("post", "put", "patch"):
                    responses.setdefault("422", _problem_response("Invalid request"))
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
