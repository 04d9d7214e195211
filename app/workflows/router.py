from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.api.deps import Reader
from app.core.errors import NotFound
from workflows.engine import Workflow, WorkflowRegistry

router = APIRouter(prefix="/workflows", tags=["workflows"])


def _registry(request: Request) -> WorkflowRegistry:
    reg: WorkflowRegistry = request.app.state.env.workflows
    return reg


def _get(request: Request, name: str) -> Workflow:
    reg = _registry(request)
    if not reg.has(name):
        raise NotFound(f"no workflow named {name}")
    return reg.latest(name)


@router.get("")
async def list_workflows(request: Request, _: Reader) -> dict[str, Any]:
    """The loaded workflow definitions."""
    reg = _registry(request)
    return {"items": [reg.latest(n).describe() for n in reg.names()], "next_cursor": None}


@router.get("/{name}")
async def get_workflow(name: str, request: Request, _: Reader) -> dict[str, Any]:
    """One workflow: states, transitions, guards, payloads and deadlines."""
    return _get(request, name).describe()


@router.get("/{name}/diagram", response_class=PlainTextResponse)
async def get_diagram(name: str, request: Request, _: Reader) -> str:
    """The state diagram as Mermaid text."""
    return _get(request, name).mermaid()
